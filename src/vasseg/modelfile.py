"""Exported model files: one self-describing, non-pickle file per trained network (safetensors).

``vasseg export RUN model.safetensors`` writes the inference network (the student VNet) of a
run's checkpoint in the `safetensors <https://huggingface.co/docs/safetensors>`_ format, which
holds raw tensors and a JSON header and cannot carry code:

- tensors: the network's ``state_dict``; parameters in the chosen dtype (``fp16``, the default,
  ``bf16`` or ``fp32``), floating buffers (batch-norm running statistics) in float32, integer
  buffers unchanged. A 16-filter LA VNet is 18.9 MB in half precision.
- metadata (strings; JSON where structured): ``format`` (``vasseg-model``), ``format_version``,
  ``vasseg_version``, ``config`` (the resolved experiment, :func:`vasseg.config.to_dict`),
  ``class_names``, ``preprocessing`` (the record of the run's dataset format, :mod:`vasseg.data.format`:
  z-score and scale, or a prepared dataset's modality, CT window or MR percentile clip, target shape or
  spacing, normalisation and label map) and ``weights``
  (network, dtype, training step, method, the checkpoint's file name), ``checksum`` (SHA-256 of
  the tensors, checked on reading: corrupted weight bytes are refused).

``vasseg predict``, ``vasseg evaluate``, :func:`vasseg.load_model` and ``train.init_from`` read it
on any machine: nothing else from the run folder is needed. Reading never unpickles: a pickle (a
``torch.save`` file) in its place is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from vasseg.atomic import atomic_write_bytes
from vasseg.config import ConfigError, Experiment, apply_overrides, build_experiment, to_dict
from vasseg.data.format import format_for_record
from vasseg.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "vasseg-model", "1"
SUFFIX = ".safetensors"
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# torch.save writes a zip archive; older torch and plain pickles start with the PROTO opcode.
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header, bytes


class ModelFileError(CheckpointError):
    """A model file cannot be written, read or trusted; the message names the file."""


@dataclass
class ModelFile:
    """The contents of an exported model file."""

    path: Path
    exp: Experiment
    weights: dict[str, torch.Tensor]
    class_names: tuple[str, ...]
    preprocessing: dict[str, Any]
    info: dict[str, Any]  # the ``weights`` record: network, dtype, step, method, checkpoint

    @property
    def step(self) -> int:
        return int(self.info.get("step", 0))


# --------------------------------------------------------------------------- writing


def network_tensors(network: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The network's state dict for the file: parameters in ``dtype``, float buffers in float32."""
    params = {name for name, _ in network.named_parameters()}
    out = {}
    for name, tensor in network.state_dict().items():
        if tensor.is_floating_point():
            tensor = tensor.to(dtype if name in params else torch.float32)
        out[name] = tensor.detach().cpu().contiguous()
    return out


def check_output(path: str | Path, dtype: str, overwrite: bool = True) -> Path:
    """Refuse a bad model-file path or dtype before any work; returns the path."""
    path = Path(path).expanduser()
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose {', '.join(DTYPES)}")
    if path.suffix != SUFFIX:
        raise ConfigError(f"{path}: a model file must end in {SUFFIX}")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: output directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; pass --overwrite to replace")
    return path


def write_model_file(path: str | Path, exp: Experiment, network: nn.Module, preprocessing: dict[str, Any],
                     class_names: Sequence[str], dtype: str = "fp16", info: dict[str, Any] | None = None) -> Path:
    """Write ``network``'s weights and their description atomically to ``path`` (``.safetensors``)."""
    from safetensors.torch import save

    from vasseg import __version__

    path = check_output(path, dtype)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "vasseg_version": __version__,
        "config": json.dumps(to_dict(exp)), "class_names": json.dumps(list(class_names)),
        "preprocessing": json.dumps(preprocessing),
        "weights": json.dumps({"network": "student", "dtype": dtype, **(info or {})}),
    }
    tensors = network_tensors(network, DTYPES[dtype])
    blob = save(tensors, metadata=meta | {"checksum": tensors_checksum(tensors)})
    try:
        atomic_write_bytes(path, lambda fh: fh.write(blob))
    except OSError as exc:
        raise ModelFileError(f"{path}: could not write the model file ({exc.strerror or exc})") from None
    return path


# --------------------------------------------------------------------------- reading


def _head(path: Path, n: int = 16) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def is_model_file(path: str | Path) -> bool:
    """True for a ``.safetensors`` path, or a file whose first bytes are a safetensors header."""
    path = Path(path).expanduser()
    if path.suffix == SUFFIX:
        return True
    if not path.is_file():
        return False
    head = _head(path)
    return len(head) > 8 and 2 <= int.from_bytes(head[:8], "little") <= MAX_HEADER and head[8:9] == b"{"


def _json(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except KeyError:
        raise ModelFileError(f"{path}: model file metadata has no {key!r} entry") from None
    except ValueError as exc:
        raise ModelFileError(f"{path}: model file metadata {key!r} is not JSON ({exc})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type and OSError
        raise ModelFileError(f"{path}: not a readable safetensors model file "
                             f"({' '.join(str(exc).split())[:160] or type(exc).__name__})") from None


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def read_model_file(path: str | Path, overrides: Sequence[str] = ()) -> ModelFile:
    """Read and validate a model file; ``overrides`` (``data.root=...``) apply to its config."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    head = _head(path)
    # A safetensors header length may begin with byte 0x80 too; its JSON header then starts at byte 8.
    if head.startswith(PICKLE_MAGIC) and head[8:9] != b"{":
        raise ModelFileError(f"{path}: refused: this is a pickle (torch.save) file, not a safetensors model "
                             f"file; nothing in it was loaded (make one with `vasseg export RUN {path.name}`)")
    meta, weights = _read_safetensors(path)
    if "checksum" in meta and meta["checksum"] != tensors_checksum(weights):  # files before it had none
        raise ModelFileError(f"{path}: the weights are corrupt (their SHA-256 differs from the one recorded "
                             f"when the file was written); export the model again")
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a vasseg model file (metadata format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file format version {meta.get('format_version')!r} "
                             f"(this vasseg reads {FORMAT_VERSION})")
    raw = _json(meta, "config", path)
    try:
        exp = build_experiment(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise ModelFileError(f"{path}: config: {exc}") from None
    prep, names = _json(meta, "preprocessing", path), _json(meta, "class_names", path)
    try:
        format_for_record(prep, f"{path}: model file preprocessing")
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    if not isinstance(names, list) or len(names) != exp.data.num_classes:
        raise ModelFileError(f"{path}: model file class_names must list {exp.data.num_classes} names")
    return ModelFile(path, exp, weights, tuple(map(str, names)), prep, _json(meta, "weights", path))


def load_weights(network: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``weights`` into ``network`` (cast to its dtypes), strictly; one line when they do not fit."""
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelFileError(f"{path}: weights do not fit the network ({detail})") from None
