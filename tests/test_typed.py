"""The generic typed builder behind every config section."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from vasseg.typed import ConfigError, build_dataclass


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int, int] = (1, 2, 3)
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: tuple[int, ...] = ()
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_lists_become_tuples_ints_floats_and_nested_sections_build() -> None:
    got = build_dataclass(Outer, {"steps": [3, 4], "inner": {"size": [5, 6, 7], "scale": 2}}, "x")
    assert got == Outer(steps=(3, 4), inner=Inner(size=(5, 6, 7), scale=2.0))
    assert isinstance(got.inner.scale, float)
    assert build_dataclass(Outer, None, "x") == Outer()


@pytest.mark.parametrize("values, message", [
    ({"stepz": [1]}, "unknown key 'x.stepz' (did you mean 'steps'?)"),
    ({"inner": {"size": [1, 2]}}, "x.inner.size: expected 3 values, got 2 ([1, 2])"),
    ({"limit": "ten"}, "x.limit: expected an integer, got 'ten'"),
    ({"limit": True}, "x.limit: expected an integer, got True"),
    ({"inner": {"scale": "big"}}, "x.inner.scale: expected a number, got 'big'"),
    ({"inner": 3}, "x.inner: expected a mapping, got 3"),
])
def test_errors_name_the_full_key_path(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_dataclass(Outer, values, "x")
    assert str(exc.value) == message


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1E-4", 1e-4), ("2e2", 200.0), ("-1.5e-2", -0.015),
                                         ("+.5e1", 5.0), ("3.e0", 3.0)])
def test_scientific_notation_is_a_number(text: str, value: float) -> None:
    assert build_dataclass(Inner, {"scale": text}, "x").scale == value
    assert build_dataclass(Outer, {"inner": {"scale": text}}, "x").inner.scale == value


@pytest.mark.parametrize("text", ["e3", "1e", "1e-", "1.5", "inf", "nan", "1e3x", "0x10"])
def test_other_strings_are_still_not_numbers(text: str) -> None:
    with pytest.raises(ConfigError, match=r"x.scale: expected a number"):
        build_dataclass(Inner, {"scale": text}, "x")
