"""Method registry: each method is one small file registered by name.

``get_method(name)`` returns the class; importing this package imports every built-in method so
that they register themselves.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from vasseg.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register(name: str) -> Callable[[M], M]:
    """Class decorator that registers a :class:`Method` subclass under ``name``."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(available_methods())}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def _import_builtin_methods() -> None:
    """Import every module of this package so that its methods register themselves."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "losses") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_builtin_methods()
