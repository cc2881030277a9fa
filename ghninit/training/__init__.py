"""Training and evaluating GHNs: the meta-batched trainer, its image data, one command-line run, the card.

:mod:`~ghninit.training.trainer` runs Eq. 2 of the GHN-2 paper with meta-batches, DDP and
resumable checkpoints, for the GHN-2 family and GHN-3; :mod:`~ghninit.training.data` builds the
deterministic image batches from CIFAR-10, ImageNet or any ImageFolder tree;
:mod:`~ghninit.training.run` is one run of ``python -m ghninit train`` (budgets, logs, DDP
processes, the final GHN); :mod:`~ghninit.training.card` writes and reads what a trained GHN has
seen; :mod:`~ghninit.training.reference_check` evaluates a GHN-2's predicted parameters on the
reference's example networks with the reference's protocol (``python -m ghninit check ghn2-*``).
Architectures come from :mod:`ghninit.deepnets`. Only the command line (:mod:`ghninit.cli`) and
``benchmarks/`` import it; ``import ghninit`` does not.
"""
