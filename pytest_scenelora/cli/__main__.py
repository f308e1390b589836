"""``python -m pytest_scenelora.cli``: the ``scenelora`` command."""

from .main import main

raise SystemExit(main())
