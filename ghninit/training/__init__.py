"""Training and evaluating GHNs: the meta-batched trainer, its image data, the reference's evaluation.

:mod:`~ghninit.training.trainer` runs Eq. 2 of the GHN-2 paper with meta-batches, DDP and
resumable checkpoints; :mod:`~ghninit.training.data` builds the deterministic image batches;
:mod:`~ghninit.training.reference_check` evaluates a GHN-2's predicted parameters on the
reference's example networks with the reference's protocol (``python -m ghninit check ghn2-*``).
Architectures come from :mod:`ghninit.deepnets`. Only the command line (:mod:`ghninit.cli`) and
``benchmarks/`` import it; ``import ghninit`` does not.
"""
