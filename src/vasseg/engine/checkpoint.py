"""Atomic checkpoints with a ``latest`` pointer, retention, and safe loading.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed
over its final name; only then is the ``latest`` pointer (a one-line text file, itself replaced
atomically) moved to it. A crash at any moment therefore leaves the previous checkpoint and a
pointer that names a complete file. The state is serialised in memory before the file is
opened, so a full disk surfaces as ``OSError(ENOSPC)`` from the write (``torch.save`` streaming
into a file reports it as an opaque ``RuntimeError``) and is reported as a `CheckpointError`
naming the file and the checkpoint that is still intact. Loading uses
``torch.load(weights_only=True)``: a file that carries pickled code is refused instead of executed.
"""

from __future__ import annotations

import io
import logging
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vasseg.atomic import atomic_write_bytes
from vasseg.config import ConfigError, build_experiment
from vasseg.errors import CheckpointError
from vasseg.methods.players import MAIN
from vasseg.rundir import LATEST, STEP_FILE, latest_checkpoint  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


def serialize(state: dict[str, Any]) -> bytes:
    """``torch.save`` into memory (the write to disk is then a plain, checkable byte write)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(folder: Path, name: str, state: dict[str, Any], point_latest: bool = True) -> Path:
    """Write ``state`` atomically as ``folder/name``; optionally move the ``latest`` pointer to it.

    On any OS failure (disk full, quota, I/O error) nothing is replaced: the previous checkpoint
    and the pointer stay as they were, no temporary file is left, and `CheckpointError` says so.
    """
    path = folder / name
    blob = serialize(state)
    try:
        atomic_write_bytes(path, lambda fh: fh.write(blob))
        if point_latest:
            atomic_write_bytes(folder / LATEST, lambda fh: fh.write(f"{name}\n".encode()))
    except OSError as exc:
        raise CheckpointError(
            f"{path}: could not write checkpoint ({exc.strerror or exc}); checkpoint folder "
            f"{folder} still holds the previous checkpoint ({_intact(folder)})"
        ) from None
    return path


def _intact(folder: Path) -> str:
    """How an error message names the checkpoint that survived a failed save."""
    try:
        latest = latest_checkpoint(folder)
    except CheckpointError:
        return "unreadable latest pointer"
    return f"latest = {latest.name}" if latest is not None else "none written yet"


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (never the one ``latest`` names).

    Temporary files of writes that never finished (the process was killed mid-write) go too:
    only one process writes a run's checkpoints, and its own write has completed by now.
    """
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    latest = latest_checkpoint(folder)
    steps = sorted(
        (int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := STEP_FILE.match(p.name))
    )
    for _, path in steps[: max(len(steps) - keep, 0)]:
        if latest is None or path.resolve() != latest.resolve():
            path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every global generator a method may draw from, as plain data ``weights_only`` accepts.

    torch (and CUDA) drive dropout and noise; Python's ``random`` and NumPy's global state are
    saved too because a method may use them, and exact resume must not depend on whether it does.
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (older checkpoints hold only the torch states)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state({"bit_generator": "MT19937", "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                             "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]}})


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its structure.

    Refused with a one-line `CheckpointError` naming the file: anything that is not a
    ``torch.save`` archive (a raw pickle is never unpickled), pickled code, and a state that
    `validate_checkpoint` rejects.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if _is_raw_pickle(path):
        raise CheckpointError(
            f"{path}: refused to load: a raw pickle, not a torch.save checkpoint; it was not "
            f"unpickled (only torch.save files of plain tensors and containers are accepted)"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of crafted files before refusing them.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for unsafe/corrupt files
        raise _load_error(path, exc) from None
    return validate_checkpoint(state, path)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # opens torch's pre-1.6 format


def _is_raw_pickle(path: Path) -> bool:
    """A file that is a pickle stream but neither a torch zip archive nor torch's legacy format.

    torch would hand it to its restricted unpickler (with warnings about the protocol); it is
    refused before that, by its first bytes.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(len(LEGACY_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    return head[:1] == b"\x80" and head != LEGACY_MAGIC and not head.startswith(ZIP_MAGIC)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_mapping(value: Any) -> bool:
    return isinstance(value, dict)


EXTRA_STATE = "_extra_state"  # nn.Module.get_extra_state entries (e.g. AD-MT's alternation) are not tensors


def _is_weights(value: Any) -> bool:
    return _is_mapping(value) and all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith(EXTRA_STATE)) for k, v in value.items())


def _is_optimizers(value: Any) -> bool:
    return _is_mapping(value) and MAIN in value and all(
        _is_mapping(o) and _is_mapping(o.get("state")) and isinstance(o.get("param_groups"), list)
        for o in value.values())


def _is_rng(value: Any) -> bool:
    return _is_mapping(value) and isinstance(value.get("torch"), torch.Tensor)


def _is_best(value: Any) -> bool:
    return _is_mapping(value) and isinstance(value.get("val_dice"), (int, float)) and isinstance(value.get("step"), int)


# Every entry Trainer.state_dict writes: (what it must be, its check). The optional ones are read
# with a default (``nonfinite_skips``) or only recorded (``world_size``).
REQUIRED_ENTRIES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "step": ("a non-negative integer", _is_count),
    "method": ("a mapping of parameter names to tensors (and modules' extra state)", _is_weights),
    "config": ("a mapping (the experiment's configuration)", _is_mapping),
    "optimizers": ("a mapping of optimizer states including 'main'", _is_optimizers),
    "scaler": ("a mapping (the gradient scaler's state)", _is_mapping),
    "batcher": ("a mapping (the sampler's state)", _is_mapping),
    "rng": ("a mapping holding the 'torch' generator state", _is_rng),
    "best": ("a mapping with 'val_dice' and 'step'", _is_best),
}
OPTIONAL_ENTRIES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "nonfinite_skips": ("a non-negative integer", _is_count),
    "world_size": ("a non-negative integer", _is_count),
    "precision": ("one of 'fp32', 'bf16', 'fp16'", lambda v: v in ("fp32", "bf16", "fp16")),
}


def validate_checkpoint(state: Any, path: Path) -> dict[str, Any]:
    """Check the whole structure of a loaded checkpoint once, for every reader; returns ``state``.

    Evaluation, prediction and resume index into the state without further checks, so each
    entry a vasseg checkpoint holds is checked here: present (unless optional), of the right
    kind, and a ``config`` that builds a valid experiment. A failure is one `CheckpointError`
    line naming ``path`` and the entry.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a vasseg checkpoint (a {type(state).__name__}, not a mapping)")
    if "method" not in state:
        raise CheckpointError(f"{path}: not a vasseg checkpoint (no 'method' weights)")
    for key, (kind, _) in REQUIRED_ENTRIES.items():
        if key not in state:
            raise CheckpointError(f"{path}: invalid checkpoint: entry '{key}' is missing (expected {kind})")
    for key, (kind, ok) in (REQUIRED_ENTRIES | OPTIONAL_ENTRIES).items():
        if key in state and not ok(state[key]):
            raise CheckpointError(f"{path}: invalid checkpoint: entry '{key}' is {_describe(state[key])}, "
                                  f"not {kind}")
    try:
        build_experiment(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid checkpoint: entry 'config' is not a valid experiment ({exc})") from None
    return state


def _describe(value: Any) -> str:
    """How an error message shows a wrong entry: its value when short, else its type."""
    text = repr(value)
    return f"{text} ({type(value).__name__})" if len(text) <= 40 else f"a {type(value).__name__} value"


UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)", re.IGNORECASE)
UNSUPPORTED_OPCODE = re.compile(r"Unsupported operand (\d+)")


def _load_error(path: Path, exc: Exception) -> CheckpointError:
    """A one-line error: refused (pickled code) or unreadable (truncated, not a checkpoint).

    torch's own message for a refused global starts by suggesting ``weights_only=False``; that
    advice is deliberately not passed on: it is exactly what would run the embedded code.
    """
    text = " ".join(str(exc).split())
    if opcode := UNSUPPORTED_OPCODE.search(text):
        return CheckpointError(f"{path}: refused to load: its pickle uses an instruction (opcode "
                               f"{opcode.group(1)}) that torch's safe loader does not accept; nothing was executed")
    if "weights only" in text.lower() or "weights_only" in text or "unsupported global" in text.lower():
        found = UNSAFE_GLOBAL.search(text)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(
            f"{path}: refused to load: the file carries a pickled object{what} that could run "
            f"code; only plain tensors and containers are accepted, nothing was executed"
        )
    return CheckpointError(f"{path}: not a readable checkpoint ({text[:160] or type(exc).__name__})")


def phase_record(at: Any, step: int) -> dict[str, Any]:
    """A checkpoint's record of the phase of its next step ``at`` (a :class:`PhaseAt`): index, name
    and the step count inside it (0: the phase's hand-over is still to come)."""
    return {"index": at.index, "name": at.phase.name, "step": at.local(step)}


def check_saved_phase(saved: dict[str, Any] | None, now: dict[str, Any], method: str, step: int,
                      path: Path) -> None:
    """Refuse resuming where the method's phases put ``step`` elsewhere than the checkpoint did."""
    if saved is None:  # checkpoints written before phases existed: one-phase runs
        return
    if dict(saved) != now:
        raise CheckpointError(
            f"{path}: saved in phase {saved['name']!r} (its step {saved['step']}), but method "
            f"{method!r} now puts step {step} in phase {now['name']!r} (its step "
            f"{now['step']}); its phases changed since the run started"
        )


def warn_precision_change(saved: str | None, now: str, step: int, path: Path) -> None:
    """A resume whose training precision differs from the checkpoint's (``train.amp=auto`` resolves per
    host: bf16 on a bf16 CPU or GPU, fp32 elsewhere) continues, but not as one uninterrupted run would:
    say so once. Checkpoints written before the precision was recorded say nothing."""
    if saved is not None and saved != now:
        log.warning("%s: steps 1-%d were trained in %s, the rest now runs in %s (this host resolves "
                    "train.amp differently); the run is no longer an exact continuation. New runs that "
                    "must not depend on the host: set train.amp to none or bf16.", path, step, saved, now)
