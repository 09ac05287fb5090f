"""What the ``s.mlspec`` namespace and the command line call: HyperSpy signals in and out.

- :mod:`~hyperspy_mlspec.workflows.anomaly`: anomaly maps and anomalous regions;
- :mod:`~hyperspy_mlspec.workflows.latent`: latent phase maps (clustering) and embeddings;
- :mod:`~hyperspy_mlspec.workflows.batch`: anomaly maps of files (``hyperspy-mlspec anomaly``).

The numbers come from the array-only core (:mod:`hyperspy_mlspec.scoring`, the estimators);
the signals in and out go through the glue (:mod:`hyperspy_mlspec.signals`).
"""
