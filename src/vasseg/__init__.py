"""vasseg: semi-supervised 3D medical image segmentation (VAS and the baselines it beats)."""

__version__ = "0.1.0"
