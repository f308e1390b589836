"""The ``scenelora`` command: ``main`` dispatches to one module per subcommand family."""
