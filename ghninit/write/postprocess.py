"""Post-processing of initial parameters before fine-tuning: orthogonalise conv/linear weights.

Knyazev, "Pretraining a Neural Network before Knowing Its Architecture" (ICML 2022 pre-training
workshop, arXiv 2207.10049) found that parameters predicted by GHN-2 lack the diversity gradient
descent needs, and that replacing each conv/linear weight, from a chosen layer on, by the
orthogonal factor of its QR decomposition (after adding small noise scaled by the spread of the
weight's own row correlations) makes them fine-tune better. The classification layer is left
alone. :func:`orthogonalize_` does this to any model in place; :class:`Orthogonalize` holds the
settings and is what ``ghninit.initialize(model, ..., postprocess=...)`` takes.

The defaults are the report's recipe (``"orth"``: unit singular values, classifier untouched).
``"orth-he"`` instead gives each weight the Frobenius norm He initialisation has in expectation
(``2 * out_channels``) and the classifier He's norm; it restores He-like gradient norms before the
first step but fine-tuned worse in our measurements (``benchmarks/RESULTS.md``), so it is an
option, not the default. Differences from the reference code, on purpose: noise is added only to
the layers that are orthogonalised, norm-layer parameters are never touched, and the fused
query/key/value projection of ``nn.MultiheadAttention`` is orthogonalised as three square blocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .parametrized import current_value
from .tensors import tile

SCALES = ("orthogonal", "he", "predicted")


@dataclass(frozen=True)
class Orthogonalize:
    """Settings of :func:`orthogonalize_`; pass one as ``initialize(..., postprocess=Orthogonalize(...))``.

    Use it when the predicted (or any) parameters are the start of fine-tuning: the defaults are the
    report's recipe, which on 100-shot CIFAR-10 lifted a ViT started from ``cifar10-mini`` (version 2)
    from 21% to 31%, level with He initialisation (``benchmarks/RESULTS.md``).

    Attributes:
        noise: ``beta`` of the report: Gaussian noise of std ``noise * std(row correlations of W)``
            is added to each weight before orthogonalisation (0 for none). The report uses 3e-5.
        from_layer: first conv/linear layer (1-based, counted in ``model.modules()`` order, the
            classifier included in the count) to post-process; 0 or 1 means all. The report uses 37
            for ResNet-50 and 94 for ConvNeXt-Base (its deeper layers only); use it when the early
            predicted layers are known to be good as they are.
        scale: norm of each new weight: ``"orthogonal"`` (unit singular values, the report's recipe),
            ``"he"`` (the Frobenius norm He initialisation has in expectation, ``sqrt(2 * out)``) or
            ``"predicted"`` (the weight's norm before post-processing).
        orthogonal: replace the weight by its orthogonal factor (``True``); ``False`` keeps the
            weight's own direction and only applies ``scale`` (and ``noise``).
        classifier_scale: ``None`` leaves the classification layer alone (the report); ``"he"`` keeps
            its direction but gives its weight He initialisation's norm. GHN-2's predicted classifiers
            can be an order of magnitude smaller than that (``cifar10-mini`` on a ViT: 0.43 vs 4.57),
            which shrinks every gradient of the network.
        seed: seed of the noise; the same seed gives the same parameters.
    """

    noise: float = 3e-5
    from_layer: int = 0
    scale: str = "orthogonal"
    orthogonal: bool = True
    classifier_scale: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"Orthogonalize(scale={self.scale!r}): expected one of {SCALES}")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"Orthogonalize(noise={self.noise!r}): expected a finite number >= 0")
        if self.classifier_scale not in (None, "he"):
            raise ValueError(f"Orthogonalize(classifier_scale={self.classifier_scale!r}): expected None or 'he'")
        if self.from_layer < 0:
            raise ValueError(
                f"Orthogonalize(from_layer={self.from_layer}): expected 0 (all layers) or a layer number >= 1"
            )

    @classmethod
    def reference(cls, from_layer: int = 0, noise: float = 3e-5, seed: int = 0) -> Orthogonalize:
        """The report's recipe (``--init orth --beta 3e-5 --layer L`` in the reference's fine-tuning script)."""
        return cls(noise=noise, from_layer=from_layer, scale="orthogonal", classifier_scale=None, seed=seed)

    def describe(self) -> str:
        """One line for reports, e.g. ``orthogonalize(noise=3e-05, from_layer=0, scale=orthogonal, ...)``."""
        kind = "orthogonalize" if self.orthogonal else "rescale"
        return (
            f"{kind}(noise={self.noise:g}, from_layer={self.from_layer}, scale={self.scale}, "
            f"classifier_scale={self.classifier_scale}, seed={self.seed})"
        )


PRESETS = {
    "orth": Orthogonalize.reference(),
    "orth-he": Orthogonalize(scale="he", classifier_scale="he"),
}


def resolve_postprocess(postprocess: bool | str | Orthogonalize | None) -> Orthogonalize | None:
    """``initialize``'s ``postprocess`` argument as settings: ``None``/``False`` (none), ``True``
    (:class:`Orthogonalize` defaults, the report's recipe), a preset name (``"orth"``: the same;
    ``"orth-he"``: He's norms, see the module docstring) or an :class:`Orthogonalize`."""
    if postprocess is None or postprocess is False:
        return None
    if postprocess is True:
        return Orthogonalize()
    if isinstance(postprocess, Orthogonalize):
        return postprocess
    if isinstance(postprocess, str) and postprocess in PRESETS:
        return PRESETS[postprocess]
    raise ValueError(
        f"postprocess={postprocess!r}: expected None, True, one of {sorted(PRESETS)} or a ghninit.Orthogonalize(...)"
    )


def _layers(model: nn.Module) -> list[tuple[str, int]]:
    """``(parameter name, number of square blocks)`` of every conv/linear weight, in ``model.modules()`` order.

    A fused ``nn.MultiheadAttention`` input projection counts as one layer of three blocks.
    """
    layers = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, nn.MultiheadAttention):
            if module.in_proj_weight is not None:
                layers.append((f"{dot}in_proj_weight", 3))
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight is not None:
            layers.append((f"{dot}weight", 1))
    return layers


def _orthogonal_factor(mat: torch.Tensor) -> torch.Tensor:
    """The semi-orthogonal factor Q of ``mat``'s QR decomposition, taken along its longer side, signs fixed by R."""
    transposed = mat.shape[0] < mat.shape[1]
    tall = mat.T if transposed else mat
    q, r = torch.linalg.qr(tall)
    signs = torch.diagonal(r).sign()
    q = q * torch.where(signs == 0, torch.ones_like(signs), signs)
    return q.T if transposed else q


def _correlation_spread(mat: torch.Tensor) -> torch.Tensor:
    """Std of the correlation coefficients between the rows of ``mat`` taken tall (as the report does)."""
    tall = mat.T if mat.shape[0] < mat.shape[1] else mat
    corr = torch.corrcoef(tall).flatten()
    corr = corr[torch.isfinite(corr)]  # constant rows have no correlation
    return corr.std() if corr.numel() > 1 else torch.zeros((), dtype=mat.dtype)


def _transform(weight: torch.Tensor, config: Orthogonalize, generator: torch.Generator) -> torch.Tensor:
    """One square block or conv/linear weight, post-processed (float64 inside, ``weight``'s dtype out)."""
    mat = weight.detach().reshape(weight.shape[0], -1).to(device="cpu", dtype=torch.float64)
    rows, cols = mat.shape
    norm = mat.norm()
    if config.noise > 0:
        noise = torch.randn(mat.shape, generator=generator, dtype=torch.float64)
        mat = mat + config.noise * _correlation_spread(mat) * noise
    if config.orthogonal:
        new = _orthogonal_factor(mat)  # squared Frobenius norm min(rows, cols)
    else:
        new = mat / mat.norm().clamp_min(1e-12) * math.sqrt(min(rows, cols))  # an orthogonal matrix's norm
    if config.scale == "he":
        new = new * math.sqrt(2.0 * rows / min(rows, cols))
    elif config.scale == "predicted":
        new = new * (norm / math.sqrt(min(rows, cols)))
    return new.reshape(weight.shape).to(device=weight.device, dtype=weight.dtype)


def plan(
    model: nn.Module,
    config: Orthogonalize,
    values: dict[str, torch.Tensor] | None = None,
    only: Iterable[str] | None = None,
    classifier: Iterable[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The post-processed conv/linear weights of ``model``, computed without changing anything.

    Args:
        model: the network; its conv/linear weights are read unless ``values`` has them.
        config: what to do.
        values: parameter name -> tensor to use instead of the model's current value (e.g. predicted
            tensors not yet written); tensors of another shape are tiled as ``initialize`` would.
        only: post-process just these parameter names (e.g. the ones a GHN predicted).
        classifier: parameter names of the classification layer, left alone; default: the last
            conv/linear layer in ``model.modules()`` order, as in the report.
        generator: the noise's random stream (default: a new one seeded with ``config.seed``); pass
            one generator to successive calls that each take one layer (in layer order) to get the
            noise of a single call over all of them (a sharded model, one tensor at a time).

    Returns:
        parameter name -> new tensor (the parameter's shape, dtype and device), in layer order.

    Raises:
        ValueError: when the model has no conv/linear layer to post-process.
    """
    layers = _layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no conv/linear weight to post-process")
    skip = set(classifier) if classifier is not None else {layers[-1][0]}
    wanted = None if only is None else set(only)
    params = dict(model.named_parameters())
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    out: dict[str, torch.Tensor] = {}
    for number, (name, blocks) in enumerate(layers, start=1):
        if wanted is not None and name not in wanted:
            continue
        is_classifier = name in skip
        if (is_classifier and config.classifier_scale is None) or (not is_classifier and number < config.from_layer):
            continue
        if name not in params and (values is None or name not in values):
            continue  # a parametrized weight not being predicted: not a parameter to change in place
        target = params[name] if name in params else current_value(model, name)  # a parametrized weight
        value = values[name] if values is not None and name in values else target.detach()
        if value.shape != target.shape:
            value = tile(value, tuple(target.shape))
        if not torch.isfinite(value).all():
            raise ValueError(f"cannot post-process '{name}': it has NaN or infinite values")
        if is_classifier:  # direction kept, He's norm
            mat = value.reshape(value.shape[0], -1)
            out[name] = value * (math.sqrt(2.0 * mat.shape[0]) / mat.norm().clamp_min(1e-12))
            continue
        parts = value.chunk(blocks, dim=0) if blocks > 1 else (value,)
        out[name] = torch.cat([_transform(part, config, generator) for part in parts], dim=0)
    return out


@torch.no_grad()
def orthogonalize_(
    model: nn.Module,
    noise: float = 3e-5,
    from_layer: int = 0,
    scale: str = "orthogonal",
    *,
    orthogonal: bool = True,
    classifier_scale: str | None = None,
    seed: int = 0,
    classifier: Iterable[str] | None = None,
) -> list[str]:
    """Orthogonalise ``model``'s conv/linear weights in place, as :class:`Orthogonalize` describes.

    Use it on a model initialised by a GHN (or any other way) right before fine-tuning; the report's
    recipe (the defaults) with the report's layer choice is ``orthogonalize_(model, from_layer=37)``
    for ResNet-50. Biases, norm layers and embeddings are left alone; so is the classifier (the last conv/linear
    layer unless ``classifier`` names its parameters), but for its norm with ``classifier_scale="he"``. All new weights are computed before the first write, so
    a failure leaves the model untouched.

    Returns:
        the names of the parameters changed.
    """
    config = Orthogonalize(
        noise=noise,
        from_layer=from_layer,
        scale=scale,
        orthogonal=orthogonal,
        classifier_scale=classifier_scale,
        seed=seed,
    )
    return apply_(model, config, classifier=classifier)


@torch.no_grad()
def apply_(model: nn.Module, config: Orthogonalize, classifier: Iterable[str] | None = None) -> list[str]:
    """:func:`orthogonalize_` with its settings as one :class:`Orthogonalize`; returns the names changed."""
    new = plan(model, config, classifier=classifier)
    params = dict(model.named_parameters())
    for name, value in new.items():
        params[name].copy_(value)
    return list(new)
