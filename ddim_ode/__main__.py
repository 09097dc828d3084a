"""``python -m ddim_ode``: the ``ddim-ode`` command line."""

from .cli import main

raise SystemExit(main())
