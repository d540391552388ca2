"""Buffered scalar logging: JSONL (always) and TensorBoard (when installed).

Losses stay on the device as detached tensors until a flush, so a training step never waits for
the device; one flush every ``log_every`` steps moves all of them to the host at once, checks
that they are finite and writes them.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from vasseg.atomic import WriteError, atomic_write_bytes
from vasseg.rundir import RunDir

log = logging.getLogger(__name__)


def detached(values: dict[str, Any]) -> dict[str, Any]:
    """Step outputs for logging: tensors detached (methods return their terms as computed)."""
    return {k: v.detach() if isinstance(v, Tensor) else v for k, v in values.items()}


class NonFiniteError(RuntimeError):
    """A loss or gradient norm became NaN/inf; the message names the step and the term."""


class ScalarLog:
    """Collects per-step scalars and writes them to ``scalars.jsonl`` (+ TensorBoard)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = RunDir(run_dir).scalars
        self.enabled = enabled
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self.writer = self._tensorboard(RunDir(run_dir).tensorboard) if (tensorboard and enabled) else None

    @staticmethod
    def _tensorboard(folder: Path) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed: scalars go to scalars.jsonl only")
            return None
        return SummaryWriter(log_dir=str(folder))

    def truncate_after(self, step: int) -> None:
        """Keep only the rows a checkpoint taken after ``step`` steps had already seen.

        A resumed run redoes the training steps ``step, step+1, ...``, so their rows go; the
        validation row written at ``step`` (before that checkpoint was saved) stays. A line cut
        short by a kill is dropped too. The file is replaced atomically.
        """
        if not self.enabled or not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if _before(ln, step)]
        atomic_write_bytes(self.path, lambda fh: fh.write("".join(f"{ln}\n" for ln in kept).encode()))

    def record(self, step: int, values: dict[str, Any]) -> None:
        """Buffer the scalars of ``step`` (tensors are detached; nothing synchronises here)."""
        self.pending.append((step, detached(values)))

    def flush(self, check: bool = True, reduce: Callable[[Tensor], Tensor] | None = None) -> list[dict[str, Any]]:
        """Move buffered scalars to the host, check them, write them; returns the rows."""
        if not self.pending:
            return []
        rows = _to_host(self.pending, reduce)
        self.pending = []
        if check:
            _check_finite(rows)
        self._write(rows)
        return rows

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self.enabled:
            try:
                with self.path.open("a") as fh:
                    for row in rows:
                        fh.write(json.dumps(row) + "\n")
            except OSError as exc:  # a full disk: the write itself does not name the file
                raise WriteError(f"{self.path}: could not append scalars ({exc.strerror or exc}); the "
                                 f"run's last checkpoint is intact (a cut line is dropped on --resume)") from None
            if self.writer is not None:
                for row in rows:
                    for key, value in row.items():
                        if key != "step" and isinstance(value, (int, float)):
                            self.writer.add_scalar(key, value, row["step"])
                self.writer.flush()

    def write_row(self, step: int, values: dict[str, float]) -> None:
        """Write host scalars right away (validation results may be NaN: not checked)."""
        self.flush()
        self._write([{"step": step, **values}])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _before(line: str, step: int) -> bool:
    """Whether a JSONL row belongs to the state of a checkpoint taken after ``step`` steps."""
    try:
        row = json.loads(line)
        row_step = int(row["step"])
    except (ValueError, KeyError, TypeError):
        if line.strip():
            log.warning("scalars.jsonl: dropping an incomplete line (a kill mid-write): %.60s", line)
        return False
    training = any(k != "step" and not k.startswith("val_") for k in row)
    return row_step < step or (row_step == step and not training)


def _to_host(pending: list[tuple[int, dict[str, Any]]],
             reduce: Callable[[Tensor], Tensor] | None = None) -> list[dict[str, Any]]:
    """One device->host transfer per key for the whole buffer."""
    by_key: dict[str, list[int]] = defaultdict(list)
    tensors: dict[str, list[Tensor]] = defaultdict(list)
    for i, (_, values) in enumerate(pending):
        for key, value in values.items():
            if isinstance(value, Tensor):
                by_key[key].append(i)
                tensors[key].append(value.float().reshape(()))
    rows: list[dict[str, Any]] = [{"step": step, **{k: v for k, v in values.items() if not isinstance(v, Tensor)}}
                                  for step, values in pending]
    for key, idx in by_key.items():
        stacked = torch.stack(tensors[key])
        if reduce is not None:  # e.g. the mean over DDP ranks
            stacked = reduce(stacked)
        for i, value in zip(idx, stacked.cpu().tolist()):
            rows[i][key] = value
    return rows


def _check_finite(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteError(f"step {row['step']}: {key} = {value}")
