"""Cases loaded as the engine loads them: through the registered dataset format of a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vasseg.config import build_experiment
from vasseg.data.format import get_format
from vasseg.data.volumes import VolumeSet


def load_cases(dataset: str, root: Path, ids: Sequence[str], list_name: str = "the id list",
               **data: Any) -> VolumeSet:
    """``data.dataset: dataset`` at ``root`` with the ``data`` settings given; ``ids`` on the CPU."""
    exp = build_experiment({"data": {"dataset": dataset, "root": str(root), **data}})
    return get_format(exp).load_cases(ids, progress=False, list_name=list_name)
