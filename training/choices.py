"""What training chooses among, by name, and how many cut dates it judges on: light enough for the CLI to read
at start-up without loading the models (``models.purchase_models`` maps the names to the classes)."""

AUTO = "auto"  # let training choose on the backtest (training.train)
PURCHASE_MODEL_NAMES = ("bgnbd", "mbgnbd", "pareto_nbd")  # ``btyd.model``
CLV_SOURCES = ("btyd", "learned")  # what can serve ``clv`` (``clv.model``)
# How much worse (absolute) the learned CLV's decile MAPE may be than the BTYD CLV's when it ranks better.
MAPE_SLACK = 0.25
CUTS = 3  # cut dates a run is judged on, when the history allows (``backtest_cuts``)
# About the most customers the classifiers and the learned CLV learn from: on larger shops a sample by customer id, each
# lifecycle stage in proportion (``sample_customers``; training.tables.Sample.trained).
SAMPLE_CUSTOMERS = 500_000
