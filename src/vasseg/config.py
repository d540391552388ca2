"""Typed experiment configuration: YAML -> frozen dataclasses, with dotted CLI overrides.

An experiment has six sections (``data``, ``model``, ``method``, ``train``, ``eval``, ``run``).
Unknown keys, wrong types and values outside an option set (``Literal[...]``) fail at load time
with the key's full path. The ``method`` section holds ``name`` plus that method's own
hyper-parameters, validated against the frozen dataclass the method registers; ``data.dataset``
names a registered dataset format. Both are looked up in :mod:`vasseg.registry`, which imports
the one method and format named (this module imports neither), and both check the experiment
once it is built (``check_config``). A YAML file may name a ``base:`` file (relative to itself)
whose values it overrides, so variants stay a few lines long.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from vasseg import registry
from vasseg.identity import absolute_paths, identity_hash

# ConfigError lives beside the typed builder; callers import it from here too.
from vasseg.typed import ConfigError, build_dataclass


LA_SPACING: tuple[float, float, float] = (0.625, 0.625, 0.625)  # mm: the LA release's voxels, isotropic


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how training patches are drawn.

    Spatial sizes follow the array order of the files (LA: x, y, z), in voxels.
    """

    # A registered format (vasseg.registry): "la", the LA h5 layout (also the phantoms'); "prepared", `vasseg prepare`'s
    dataset: str = "la"
    root: str = ""  # dataset root; relative paths resolve against the config file's directory
    labeled: int = 8  # first N ids of train.list are labeled (the benchmark protocol)
    num_val: int = 0  # last N ids of train.list form the validation split (never used for training)
    val_ids: tuple[str, ...] = ()  # explicit validation ids (overrides num_val)
    # K-fold validation over the ids after the labeled ones: fold k of `folds` contiguous blocks is
    # the validation split, the other blocks are unlabeled (0: off; excludes num_val / val_ids).
    folds: int = 0
    fold: int = 0
    # "file": intensities as the files hold them (the LA release: z-scored over the whole MRI, then
    # cropped, so each crop has its own scale); "zscore": every volume re-z-scored over itself.
    intensity: Literal["file", "zscore"] = "file"
    train_list: str = "train.list"
    test_list: str = "test.list"
    num_classes: int = 2  # including background
    class_names: tuple[str, ...] = ()  # one per class incl. background, for tables (default: ids)
    scale: float = 1.0  # <1 down-samples volumes (CPU-scale protocol); evaluation can stay native
    spacing: tuple[float, float, float] = LA_SPACING  # mm, for formats without geometry
    patch_size: tuple[int, int, int] = (112, 112, 80)
    labeled_bs: int = 2
    unlabeled_bs: int = 2
    augment: bool = True  # the lineage's rot90 + flip in the x-y plane
    on_device: bool = True  # keep the volumes in device memory and augment there (GPU fast path)


@dataclass(frozen=True)
class ModelConfig:
    """The backbone. ``name`` is ``vnet`` (the lineage's 9.45 M-parameter VNet)."""

    name: Literal["vnet"] = "vnet"
    in_channels: int = 1
    filters: int = 16
    norm: Literal["batchnorm", "groupnorm", "instancenorm", "none"] = "batchnorm"
    dropout: bool = True


@dataclass(frozen=True)
class MethodConfig:
    """A registered method's name and its validated hyper-parameters (a frozen dataclass)."""

    name: str = "supervised"
    params: Any = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule and engine switches. Steps are counted in iterations."""

    iterations: int = 6000
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_policy: Literal["step", "poly", "constant"] = "step"
    lr_step: int = 2500  # step policy: multiply by lr_gamma every lr_step iterations
    lr_gamma: float = 0.1
    poly_power: float = 0.9
    ema_decay: float = 0.99  # teacher decay, with the lineage's warm-up min(1 - 1/(step+1), decay)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 where the GPU/CPU has it natively
    grad_clip: float = 0.0  # max global grad norm of the student; 0 disables
    seed: int = 1337
    deterministic: bool = False  # deterministic algorithms (slower on GPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA
    compile: bool = False  # torch.compile the networks (GPU; first steps pay the compile time)
    sync_bn: bool = False  # DDP only: BatchNorm statistics over the global batch (CUDA only)
    log_every: int = 10  # scalars are synchronised, checked and written every N steps
    val_every: int = 0  # validate on the validation split every N steps (0: never)
    ckpt_every: int = 500
    keep_checkpoints: int = 2  # step checkpoints kept besides best.pt
    nonfinite: Literal["stop", "skip"] = "stop"  # skip: skip a step with a non-finite loss/grad (syncs every step)
    max_nonfinite_skips: int = 20
    progress: bool = True
    # Fine-tuning: the student starts from this model file, checkpoint or run folder (weights only;
    # optimizer, schedule and step start fresh). Empty: random initialisation.
    init_from: str = ""


@dataclass(frozen=True)
class EvalConfig:
    """Sliding-window inference and metric rules."""

    patch_size: tuple[int, int, int] | None = None  # default: data.patch_size
    stride: tuple[int, int, int] = (18, 18, 4)
    batch_size: int = 4  # windows per forward pass
    empty_distance: Literal["nan", "diagonal"] = "nan"  # HD95/ASD of an empty prediction (see metrics)
    native_resolution: bool = True  # score down-sampled runs on the original-resolution labels
    checkpoint: Literal["last", "best"] = "last"  # best: on the validation split only


@dataclass(frozen=True)
class RunConfig:
    """Where outputs go."""

    out_dir: str = "runs"
    name: str = ""  # default: <dataset>_<method>_<labeled>l_s<seed>_<config hash>
    tensorboard: bool = True
    # Steps at which voxel features of the student are saved (run_dir/features/step_N.npz) for
    # the feature-space figures of `vasseg report`; empty: none.
    feature_snapshots: tuple[int, ...] = ()


@dataclass(frozen=True)
class Experiment:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def eval_patch(self) -> tuple[int, int, int]:
        return self.eval.patch_size or self.data.patch_size


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}


def method_params_class(name: str) -> type:
    """The hyper-parameter dataclass registered for method ``name``."""
    return registry.get(registry.METHOD, name).Params


def build_experiment(raw: Mapping[str, Any]) -> Experiment:
    """Validate a nested mapping (as loaded from YAML) into an :class:`Experiment`.

    After the field checks, the data format and the method check the whole experiment
    (``check_config``: e.g. a method that needs unlabeled patches refuses ``data.unlabeled_bs=0``).
    """
    raw = dict(raw)
    unknown = [k for k in raw if k not in (*SECTIONS, "method")]
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*SECTIONS, "method"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown section '{unknown[0]}'{hint}")
    sections = {name: build_dataclass(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    method_raw = dict(raw.get("method") or {})
    name = method_raw.pop("name", MethodConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected a string, got {name!r}")
    try:
        method_cls = registry.get(registry.METHOD, name)
    except KeyError as exc:
        raise ConfigError(f"method.name: {exc.args[0]}") from None
    params = build_dataclass(method_cls.Params, method_raw, "method")
    exp = Experiment(method=MethodConfig(name=name, params=params), **sections)
    check_experiment(exp)
    registry.get(registry.FORMAT, exp.data.dataset).check_config(exp)
    method_cls.check_config(exp)
    return exp


def check_experiment(exp: Experiment) -> None:
    """Cross-field checks that single fields cannot express."""
    formats = registry.names(registry.FORMAT)
    if exp.data.dataset not in formats:
        raise ConfigError(f"data.dataset: {exp.data.dataset!r} is not one of {', '.join(formats)}")
    positive = {
        "train.iterations": exp.train.iterations,
        "data.labeled_bs": exp.data.labeled_bs,
        "data.num_classes": exp.data.num_classes - 1,
        "train.log_every": exp.train.log_every,
        "train.ckpt_every": exp.train.ckpt_every,
        "eval.batch_size": exp.eval.batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive (got {value})")
    non_negative = {
        "data.labeled": exp.data.labeled,
        "data.num_val": exp.data.num_val,
        "data.folds": exp.data.folds,
        "data.fold": exp.data.fold,
        "data.unlabeled_bs": exp.data.unlabeled_bs,
        "train.val_every": exp.train.val_every,
        "train.keep_checkpoints": exp.train.keep_checkpoints,
        "train.max_nonfinite_skips": exp.train.max_nonfinite_skips,
        "train.grad_clip": exp.train.grad_clip,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must not be negative (got {value})")
    if not (exp.train.lr > 0 and math.isfinite(exp.train.lr)):
        raise ConfigError(f"train.lr: must be a positive finite number (got {exp.train.lr})")
    if exp.data.folds and (exp.data.num_val or exp.data.val_ids):
        raise ConfigError("data.folds: k-fold validation excludes data.num_val and data.val_ids")
    if exp.data.fold and exp.data.fold >= max(exp.data.folds, 1):
        raise ConfigError(f"data.fold: must be in 0..{max(exp.data.folds, 1) - 1} (got {exp.data.fold})")
    if exp.data.class_names and len(exp.data.class_names) != exp.data.num_classes:
        raise ConfigError(
            f"data.class_names: {len(exp.data.class_names)} names for {exp.data.num_classes} classes"
        )
    if not 0 < exp.data.scale <= 1:
        raise ConfigError(f"data.scale: must be in (0, 1] (got {exp.data.scale})")
    for key, sizes in (("data.patch_size", exp.data.patch_size), ("eval.patch_size", exp.eval_patch)):
        if any(s <= 0 or s % 16 for s in sizes):
            raise ConfigError(f"{key}: every size must be a positive multiple of 16 for the VNet (got {sizes})")
    if any(s <= 0 for s in exp.eval.stride):
        raise ConfigError(f"eval.stride: must be positive (got {exp.eval.stride})")


# ----------------------------------------------------------------------------- YAML and overrides


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML mapping, following ``base:`` chains (paths relative to the including file).

    ``_chain`` holds the files that led here, so that a loop (a -> b -> a, or a file naming
    itself) is reported with its files instead of recursing until Python gives up.
    """
    if path in _chain:
        loop = " -> ".join(str(p) for p in (*_chain[_chain.index(path):], path))
        raise ConfigError(f"{_chain[0]}: the base: chain loops ({loop})")
    data = _parse_yaml_file(path)
    base = data.pop("base", None)
    data = resolve_data_root(data, path.parent)  # relative to the file that sets it
    if base is None:
        return data
    return merge(read_yaml((path.parent / str(base)).resolve(), (*_chain, path)), data)


def _parse_yaml_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of one YAML file; every failure names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for name, value in data.items():
        if name in (*SECTIONS, "method") and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{path}: section '{name}' must be a mapping of keys, got {value!r}")
    return {k: {} if k in (*SECTIONS, "method") and v is None else v for k, v in data.items()}


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"key {key!r} given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else value
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested mapping."""
    out = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.iterations=6000")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out = merge(out, _nest(key.strip().split("."), value))
    return out


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    return {parts[0]: value} if len(parts) == 1 else {parts[0]: _nest(parts[1:], value)}


def resolve_data_root(raw: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """Make a relative ``data.root`` absolute against the config file's folder, not the CWD."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and data["root"]:
        root = Path(data["root"]).expanduser()
        if not root.is_absolute():
            data = dict(data, root=str((config_dir / root).resolve()))
            raw = dict(raw, data=data)
    return raw


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Experiment:
    """Load a YAML experiment (or the defaults when ``path`` is None) and apply overrides.

    Relative paths of overrides resolve against the working folder (:func:`absolute_paths`).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path).expanduser().resolve()
        raw = resolve_data_root(read_yaml(path), path.parent)
    raw = apply_overrides(raw, overrides)
    return absolute_paths(build_experiment(raw))


def to_dict(exp: Experiment) -> dict[str, Any]:
    """A plain nested mapping (tuples as lists) that :func:`build_experiment` accepts back."""

    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        return obj

    out = {name: plain(getattr(exp, name)) for name in SECTIONS}
    out["method"] = {"name": exp.method.name, **plain(exp.method.params)}
    return out


def dump_yaml(exp: Experiment) -> str:
    return yaml.safe_dump(to_dict(exp), sort_keys=False)


def config_hash(exp: Experiment) -> str:
    """Short hash of everything that changes the result (:mod:`vasseg.identity`)."""
    return identity_hash(to_dict(exp))


def run_name(exp: Experiment) -> str:
    if exp.run.name:
        return exp.run.name
    return (
        f"{exp.data.dataset}_{exp.method.name}_{exp.data.labeled}l_s{exp.train.seed}_{config_hash(exp)}"
    )
