"""Class names for tables, figures and model files: the config's, else the dataset's known ones."""

from __future__ import annotations

from vasseg.classes import class_names
from vasseg.config import build_experiment


def test_la_runs_name_the_left_atrium_and_configs_win() -> None:
    assert class_names(build_experiment({})) == ("background", "left atrium")
    named = build_experiment({"data": {"class_names": ["background", "atrium"]}})
    assert class_names(named) == ("background", "atrium")
    three = build_experiment({"data": {"num_classes": 3}})
    assert class_names(three) == ("background", "class 1", "class 2")
