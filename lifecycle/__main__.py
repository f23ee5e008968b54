from lifecycle.cli import main

main()
