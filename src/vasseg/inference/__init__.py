"""Everything after training: open a trained model, segment images with it, score it, export it.

- :mod:`~vasseg.inference.open`: :func:`open_model`, the one place that tells a run folder, a
  checkpoint and an exported model file apart;
- :mod:`~vasseg.inference.model`: the :class:`Model` the Python API returns (:mod:`vasseg.api`);
- :mod:`~vasseg.inference.preprocess`: a run's preprocessing record, to and from the network's grid;
- :mod:`~vasseg.inference.predict`: ``vasseg predict`` (many images, one model load);
- :mod:`~vasseg.inference.evaluate`: ``vasseg evaluate`` (a run on a split);
- :mod:`~vasseg.inference.export`: ``vasseg export`` (the model file, format in :mod:`vasseg.modelfile`).

Probabilities are computed by the :class:`~vasseg.inferer.inferer.Inferer`. The training engine
never imports this package.
"""
