"""The one plug-in registry: methods and dataset formats, each a class registered by name.

This module imports nothing from vasseg, so anything may use it without an import cycle (the
config looks names up here; the plug-ins register themselves here). Built-in plug-ins are listed
by module, explicitly (as timm lists its model modules), and imported on first use: loading a
config imports the one method and the one format it names, not every method and network.

A plug-in outside vasseg registers itself when its module is imported::

    from vasseg.registry import register

    @register("format", "toy")
    class ToyFormat(DataFormat): ...

Kinds: ``"method"`` (subclasses of :class:`vasseg.methods.base.Method`) and ``"format"``
(subclasses of :class:`vasseg.data.format.DataFormat`). Each class gets its name as ``cls.name``.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

METHOD, FORMAT = "method", "format"

# Built-ins: name -> the module that registers it when imported.
BUILTINS: dict[str, dict[str, str]] = {
    METHOD: {name: f"vasseg.methods.{name}" for name in (
        "supervised", "mean_teacher", "uamt", "sassnet", "dtc", "mcnet", "vas", "bcp", "admt")},
    FORMAT: {"la": "vasseg.data.la", "prepared": "vasseg.data.prepared"},
}
# Registered classes by kind; tests register throw-away plug-ins with monkeypatch.setitem.
REGISTERED: dict[str, dict[str, type]] = {kind: {} for kind in BUILTINS}

T = TypeVar("T", bound=type)


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: register ``cls`` as the ``kind`` plug-in ``name`` (sets ``cls.name``)."""
    table = REGISTERED[kind]

    def wrap(cls: T) -> T:
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} is registered twice")
        cls.name = name  # type: ignore[attr-defined]
        table[name] = cls
        return cls

    return wrap


def names(kind: str) -> list[str]:
    """Every ``kind`` name, built-in or registered, sorted (nothing is imported)."""
    return sorted({*BUILTINS[kind], *REGISTERED[kind]})


def get(kind: str, name: str) -> type:
    """The ``kind`` plug-in ``name``, importing its built-in module on first use.

    Raises KeyError with a one-line message listing the known names.
    """
    table = REGISTERED[kind]
    if name not in table and name in BUILTINS[kind]:
        importlib.import_module(BUILTINS[kind][name])
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; registered: {', '.join(names(kind))}")
    return table[name]
