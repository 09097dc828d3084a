"""Package indexes whose names are imported on first use (PEP 562).

``ddim_ode`` and ``ddim_ode.diffusers`` list their public names with the submodule that defines
each; :func:`lazy_attributes` gives them the module-level ``__getattr__`` and ``__dir__`` that
import a submodule only when one of its names is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str,
    namespace: dict[str, Any],
    exports: Mapping[str, str],
    submodules: Iterable[str] = (),
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package ``package`` whose globals are ``namespace``.

    ``exports`` maps a public name to the submodule defining it; ``submodules`` are reachable as
    attributes too. A name, once loaded, is stored in ``namespace`` so later look-ups skip this.
    """
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in subs:
            return importlib.import_module(f".{name}", package)
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__
