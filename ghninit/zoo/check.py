"""Checking a GHN-3 against the reference's published figures: the norm of all predicted parameters.

The reference publishes, for 74 torchvision models, the L2 norm of all parameters after
prediction with GHN-3-T and GHN-3-XL (``ghn3_published.json``, copied with its source from the
reference's ``ghn3_results.json``). If real weights and this implementation reproduce the
reference, :func:`check_paramnorm` gives the same norm (the reference's own check allows 1e-2).
Run ``python -m ghninit check ghn3-xl resnet50`` (downloads GHN-3-XL once, about 2.5 GB).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

PUBLISHED_FILE = Path(__file__).with_name("ghn3_published.json")
TOLERANCE = 1e-2


@dataclass
class CheckResult:
    """Outcome of :func:`check_paramnorm`."""

    ghn: str
    model: str
    norm: float
    published: float
    predicted_fraction: float

    @property
    def passed(self) -> bool:
        return abs(self.norm - self.published) < TOLERANCE

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        note = (
            ""
            if self.predicted_fraction == 1
            else (
                f" (only {self.predicted_fraction:.1%} of the parameters are predicted; the rest keep a random "
                "initialisation, so the norm can differ)"
            )
        )
        return (
            f"{verdict}: {self.ghn} on {self.model}: parameter norm {self.norm:.4f}, published {self.published:.4f} "
            f"(tolerance {TOLERANCE}){note}"
        )


def published() -> dict:
    """The shipped figures: ``{"source", "paramnorm", "top1", "sgd1ep_top1"}``."""
    return json.loads(PUBLISHED_FILE.read_text())


def published_paramnorm(ghn_name: str, model_name: str) -> float:
    """The published parameter norm of torchvision ``model_name`` predicted by ``ghn_name``.

    Raises:
        KeyError: naming the GHNs / models that have figures.
    """
    norms = published()["paramnorm"]
    if ghn_name not in norms:
        raise KeyError(f"no published parameter norms for '{ghn_name}'; there are some for {', '.join(norms)}")
    if model_name not in norms[ghn_name]:
        raise KeyError(
            f"no published parameter norm of '{model_name}' for {ghn_name}; models: {', '.join(norms[ghn_name])}"
        )
    return norms[ghn_name][model_name]


def check_paramnorm(
    ghn_name: str, model_name: str, ghn: str | os.PathLike | torch.nn.Module | None = None
) -> CheckResult:
    """Predict torchvision ``model_name`` (default constructor) and compare its parameter norm with the published one.

    Args:
        ghn_name: whose figures to compare with (``"ghn3-t"`` or ``"ghn3-xl"``).
        model_name: a torchvision classification model name.
        ghn: the GHN to use (default: ``load_ghn(ghn_name)``, which downloads it).
    """
    import torchvision

    import ghninit

    expected = published_paramnorm(ghn_name, model_name)
    ghn = ghninit.load_ghn(ghn_name) if ghn is None else ghn
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name).eval()
    report = ghninit.initialize(model, ghn=ghn, keep_classifier=False)
    norm = torch.norm(torch.stack([p.detach().norm() for p in model.parameters()]), 2).item()
    return CheckResult(ghn_name, model_name, norm, expected, report.n_params_predicted / report.n_params_total)
