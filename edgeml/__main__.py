"""``python -m edgeml``: the same command line as ``edgeml``."""

from edgeml.cli import main

raise SystemExit(main())
