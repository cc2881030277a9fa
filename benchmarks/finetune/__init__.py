"""Helpers of the fine-tuning benchmarks (``finetune_cifar10.py``, ``finetune_pennfudan.py``).

:mod:`.init` resolves the GHN and the starts (He, GHN, orthogonalised GHN); :mod:`.models` builds
the architectures; :mod:`.data` reads CIFAR-10 and Penn-Fudan and samples few-shot splits;
:mod:`.runs` stores runs, resumes them and writes the reports.
"""
