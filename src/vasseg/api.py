"""The Python API: load a trained model once, segment arrays, tensors or image files with it.

::

    import vasseg
    model = vasseg.load_model("runs/la_vas_16l_s1337_0a1b2c3d")   # run folder, checkpoint or model file
    labels = model.predict("case.nii.gz")                          # (X, Y, Z) label map, uint8
    probs = model.predict(image_array, probs=True)                 # (K, X, Y, Z) float32

The implementation lives in :mod:`vasseg.inference` (:mod:`vasseg.inference.model`); this module
is the stable import path.
"""

from __future__ import annotations

from vasseg.inference.model import ArrayLike, Model, Prediction, array_volume, load_model
from vasseg.inference.open import open_model
from vasseg.inferer.windows import Windows

__all__ = ["ArrayLike", "Model", "Prediction", "Windows", "array_volume", "load_model", "open_model"]
