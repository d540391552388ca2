"""Dataset formats: the data side's plug-in point, as methods are the training side's.

A format is one class, registered by name (the value of ``data.dataset``) in
:mod:`vasseg.registry`, that knows one layout on disk end to end:

* **cases**: :meth:`DataFormat.check_cases` (one error naming every id without a file) and
  :meth:`DataFormat.read_case` (one case at ``data.scale``, the model's grid);
* **scoring**: :meth:`DataFormat.scoring_grids` and :meth:`DataFormat.native_reference` (the
  label on the file's own grid, when the model's grid is another);
* **the run folder**: :meth:`DataFormat.record_run` (what a trained run keeps of its data, e.g. a
  manifest) and :meth:`DataFormat.preprocessing` (the record prediction needs; exported model
  files carry it);
* **new images**, from that record alone (a model file has nothing else):
  :meth:`DataFormat.preprocess` (a read volume -> the network's input),
  :meth:`DataFormat.to_input_grid` (probabilities -> a label map on the input's grid) and
  :meth:`DataFormat.label_ids` (the label value of each class channel).

The engine calls these and nothing format-specific; :mod:`vasseg.data.setup` builds a run's data
with them. Built-ins: :mod:`vasseg.data.la` (``la``: the LA benchmark, and the phantoms, which are
written in its layout) and :mod:`vasseg.data.prepared` (``prepared``: ``vasseg prepare`` output).

Shapes: images ``(1, X, Y, Z)`` float32, labels ``(X, Y, Z)`` uint8, probabilities
``(K, X, Y, Z)`` float32; spatial axes in the file's array order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vasseg import registry
from vasseg.data.splits import Split, read_id_list
from vasseg.data.volumes import Case, VolumeSet, resize_image, scaled_shape
from vasseg.typed import ConfigError
from vasseg.errors import DataError

if TYPE_CHECKING:
    from vasseg.config import Experiment
    from vasseg.io import Volume

log = logging.getLogger(__name__)

Record = dict[str, Any]  # a preprocessing record: {"kind": <record_kind>, "scale": ..., ...}


class DataFormat:
    """Base class of every registered dataset format (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    record_kind: ClassVar[str] = ""  # "kind" of its preprocessing records ("": the format's name)
    class_names: ClassVar[tuple[str, ...]] = ()  # known class names, background first (LA: left atrium)

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.data = exp.data

    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        """Cross-field checks when the experiment is built; ConfigError naming the key."""

    @classmethod
    def kind(cls) -> str:
        return cls.record_kind or cls.name

    @property
    def root(self) -> Path:
        """``data.root``, which must be a folder."""
        if not self.data.root:
            raise ConfigError("data.root: not set; give the dataset folder (e.g. data.root=/path/to/LA)")
        root = Path(self.data.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} is not a folder")
        return root

    # -- cases --------------------------------------------------------------------------------

    def list_ids(self, list_file: str | Path) -> list[str]:
        """Case ids of an id list (``data.train_list``, ``data.test_list``: relative to the root)."""
        return read_id_list(self.root / list_file)

    def check_cases(self, ids: Sequence[str], list_name: str) -> None:
        """One error naming every id of ``ids`` (listed in ``list_name``) that has no file."""
        raise NotImplementedError

    def read_case(self, case_id: str) -> Case:
        """One case on the model's grid (``data.scale`` applied); validated by the caller."""
        raise NotImplementedError

    def check_split(self, split: Split) -> None:
        """Refuse a split the data cannot serve (e.g. a labeled id without a label); default: any."""

    def case_file(self, case_id: str) -> Path | None:
        """The file holding one case (its size identifies the data when ``data.root`` moves), or None."""
        return None

    def load_cases(self, ids: Sequence[str], progress: bool = True, list_name: str = "the id list") -> VolumeSet:
        """The cases ``ids`` on the CPU; every id is checked before any file is read."""
        self.check_cases(ids, list_name)
        started = time.perf_counter()
        bar = tqdm(ids, desc=f"load {self.name}", unit="case", disable=not progress, leave=False)
        cases = VolumeSet([self.read_case(case_id) for case_id in bar])
        log.info("loaded %d %s cases from %s at scale %g in %.1f s (%.0f MiB)", len(cases), self.name, self.root,
                 self.data.scale, time.perf_counter() - started, cases.nbytes() / 2**20)
        return cases

    # -- scoring ------------------------------------------------------------------------------

    def scoring_grids(self, primary: str) -> tuple[str, ...]:
        """Grids every case is scored on, ``primary`` ("native" or "model") first."""
        return (primary,)

    def native_reference(self, case: Case) -> np.ndarray | None:
        """The label ``(X0, Y0, Z0)`` on the file's grid when the case was resampled; else None."""
        return case.native_label.cpu().numpy() if case.native_label is not None else None

    # -- the run folder -----------------------------------------------------------------------

    def record_run(self, run_dir: Path) -> None:
        """Copy into a new run folder what prediction needs even after the data moves."""

    def preprocessing(self, run_dir: Path) -> Record:
        """The preprocessing record of a run trained on this format (stored in model files)."""
        return {"kind": self.kind(), "scale": self.data.scale}

    # -- new images (from the record alone) ---------------------------------------------------

    @classmethod
    def input_intensities(cls, volume: Volume, record: Record) -> np.ndarray:
        """The image ``(X, Y, Z)`` float32 as the network saw its training data (default: as read)."""
        return volume.image.astype(np.float32, copy=False)

    @classmethod
    def preprocess(cls, volume: Volume, record: Record) -> torch.Tensor:
        """The network's input ``(1, X', Y', Z')`` float32: intensities, then resized by the record's scale."""
        image = torch.from_numpy(np.ascontiguousarray(cls.input_intensities(volume, record)))[None]
        scale = float(record.get("scale", 1.0))
        return image if scale == 1.0 else resize_image(image, scaled_shape(image.shape[1:], scale))

    @classmethod
    def to_input_grid(cls, probs: torch.Tensor, volume: Volume, record: Record,
                      with_probs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Model-grid probabilities ``(K, X', Y', Z')`` -> the label map ``(X, Y, Z)`` on the input's
        grid and, when asked, the probabilities there ``(K, X, Y, Z)`` (their argmax is the map)."""
        if tuple(probs.shape[1:]) != volume.image.shape:
            probs = resize_image(probs, volume.image.shape)
        labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
        return labels, (probs.cpu().numpy() if with_probs else None)

    @classmethod
    def label_ids(cls, record: Record, num_classes: int) -> tuple[int, ...]:
        """The value the label map holds for each class channel (default: the class ids)."""
        return tuple(range(num_classes))


def format_class(name: str) -> type[DataFormat]:
    """The format registered as ``name``; ConfigError naming ``data.dataset`` and the known ones."""
    try:
        return registry.get(registry.FORMAT, name)
    except KeyError as exc:
        raise ConfigError(f"data.dataset: {exc.args[0]}") from None


def get_format(exp: Experiment) -> DataFormat:
    """The experiment's format (``data.dataset``), bound to its data settings."""
    return format_class(exp.data.dataset)(exp)


def format_for_record(record: Record, where: str = "preprocessing") -> type[DataFormat]:
    """The format whose preprocessing records have ``record["kind"]``; ValueError naming ``where``."""
    kind = record.get("kind") if isinstance(record, dict) else None
    classes = [format_class(name) for name in registry.names(registry.FORMAT)]
    for cls in classes:
        if cls.kind() == kind:
            return cls
    raise DataError(f"{where}: record kind {kind!r} is not one of {', '.join(c.kind() for c in classes)}")
