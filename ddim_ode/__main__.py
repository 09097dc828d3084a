"""``python -m ddim_ode`` and the ``ddim-ode`` console script.

The OpenMP wait policy must be in the environment before PyTorch is imported (see
:mod:`ddim_ode.threads`), so this module sets it first and imports the command line only then.
"""

from __future__ import annotations

from collections.abc import Sequence

from .threads import set_wait_policy


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ddim-ode`` with the command line's thread policy; returns the exit status."""
    set_wait_policy()
    from .cli import main as cli_main  # imports torch: only now

    return cli_main(argv, choose_threads=True)


if __name__ == "__main__":
    raise SystemExit(main())
