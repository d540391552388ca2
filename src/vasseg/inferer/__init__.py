"""How a network's class probabilities of a whole volume are computed: one :class:`~vasseg.inferer.inferer.Inferer`.

The Inferer holds the evaluation settings of an experiment (windows, precision, test-time flips)
and picks the grid a case is scored on (native or model). The trainer's validation, ``vasseg
evaluate``, ``vasseg predict``, the report and the Python API all compute probabilities through it,
so the package sits below both :mod:`vasseg.engine` (training) and :mod:`vasseg.inference`
(everything after training): ``sliding`` (the lineage's windows), ``windows`` (stride, Gaussian
overlap, whole volume), ``precision`` (fp32 / bf16), ``inferer`` (the Inferer and the grids).
"""
