"""The shipped behavioural suites, installed as ``pytest_scenelora.suites``."""
