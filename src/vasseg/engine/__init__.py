"""Training: the trainer, checkpoints, optimizers, the run (folder setup, lock, resume), scalars, DDP,
stopping, and the validation scoring the trainer runs (``evaluate``). Everything after training is
:mod:`vasseg.inference`, which this package never imports (``tests/test_layers.py``)."""
