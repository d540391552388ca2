"""Methods: each one small file registered by name in :mod:`vasseg.registry`.

``get_method(name)`` returns the class, importing only that method's module. Importing this
package imports no method (nor torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from vasseg import registry

if TYPE_CHECKING:
    from vasseg.methods.base import Method

_REGISTRY = registry.REGISTERED[registry.METHOD]  # registered classes (tests add toy methods here)
M = TypeVar("M", bound=type)


def register(name: str) -> Callable[[M], M]:
    """Class decorator that registers a :class:`~vasseg.methods.base.Method` subclass under ``name``."""
    return registry.register(registry.METHOD, name)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; KeyError naming the registered ones."""
    return registry.get(registry.METHOD, name)


def available_methods() -> list[str]:
    return registry.names(registry.METHOD)
