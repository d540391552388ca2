"""vasseg: semi-supervised 3D medical image segmentation (VAS and the baselines it beats).

::

    import vasseg
    model = vasseg.load_model("runs/<run>")      # a run folder, a checkpoint or a .safetensors model file
    labels = model.predict("case.nii.gz")         # (X, Y, Z) label map on the image's grid
    run_dir = vasseg.train(exp)                   # an Experiment (vasseg.config.load_config)

``load_model``, ``Model`` and ``train`` are imported on first use, so ``import vasseg`` (and the CLI's start)
stays free of torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Model", "Windows", "__version__", "load_model", "train"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "load_model", "Windows"):
        from vasseg import api

        return getattr(api, name)
    if name == "train":
        from vasseg.training import train

        return train
    raise AttributeError(f"module 'vasseg' has no attribute {name!r}")
