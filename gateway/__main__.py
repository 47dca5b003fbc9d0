"""``python -m gateway``: the same command line as ``pkjwt-gateway``."""

from .cli import main

raise SystemExit(main())
