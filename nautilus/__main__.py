"""``python -m nautilus``: the command line (see :mod:`nautilus.cli`)."""

from nautilus.cli import main

raise SystemExit(main())
