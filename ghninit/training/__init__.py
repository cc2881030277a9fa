"""Training GHNs: the meta-batched trainer and its image data (architectures come from :mod:`ghninit.deepnets`).

:mod:`~ghninit.training.trainer` runs Eq. 2 of the GHN-2 paper with meta-batches, DDP and
resumable checkpoints; :mod:`~ghninit.training.data` builds the deterministic image batches.
Nothing outside this package and ``benchmarks/`` imports it.
"""
