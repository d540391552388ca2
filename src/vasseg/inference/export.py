"""``vasseg export RUN model.safetensors``: a run's inference network as one portable model file.

The file format is :mod:`vasseg.modelfile`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vasseg.classes import class_names
from vasseg.inference.open import open_model
from vasseg.modelfile import check_output, write_model_file

log = logging.getLogger(__name__)


def export_run(target: str | Path, out: str | Path, checkpoint: str = "last", dtype: str = "fp16",
               overwrite: bool = False) -> Path:
    """Export the inference network of a run folder (or checkpoint) to the model file ``out``."""
    check_output(out, dtype, overwrite)
    loaded = open_model(target, checkpoint, "cpu")
    prep = loaded.preprocessing
    names = prep.get("class_names") or class_names(loaded.exp)
    info = {"step": loaded.step, "method": loaded.exp.method.name, "checkpoint": loaded.checkpoint.name}
    path = write_model_file(out, loaded.exp, loaded.method.inference_network(), prep, names, dtype, info)
    log.info("exported %s (step %d, %s weights) to %s", loaded.checkpoint, loaded.step, dtype, path)
    return path
