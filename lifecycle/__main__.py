"""``python -m lifecycle``; also spark-submit's application file: ``spark-submit [options] <this file> train ...``."""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # run as a file, its folder leads sys.path, where training.py would hide the training package

from lifecycle.cli import main

main()
