"""``python -m gateway``: the same command line as ``pkjwt-gateway``."""

from gateway.cli.main import main

raise SystemExit(main())
