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


CONDITION_LIMIT = 1e3  # above this (lower bound of the) condition number, a float32 QR is redone in float64


def _orthogonal_factor(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The semi-orthogonal factor Q of the QR decomposition of ``mat`` (one matrix or a batch), taken
    along the longer side, signs fixed by R; and whether each matrix is ill-conditioned.

    Ill-conditioned means that R's diagonal spans more than :data:`CONDITION_LIMIT` (e.g. a tiled
    prediction plus tiny noise): the factor's last columns then depend on rounding, and a caller
    working in float32 should redo that matrix in float64.
    """
    transposed = mat.shape[-2] < mat.shape[-1]
    tall = mat.mT if transposed else mat
    q, r = torch.linalg.qr(tall)
    diag = torch.diagonal(r, dim1=-2, dim2=-1)
    bad = diag.abs().amax(-1) > CONDITION_LIMIT * diag.abs().amin(-1)
    signs = diag.sign()
    q = q * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(-2)
    return (q.mT if transposed else q), bad


def _correlation_spread(mat: torch.Tensor) -> torch.Tensor:
    """Std of the correlation coefficients between the rows of ``mat`` taken tall (as the report does).

    Equal to ``torch.corrcoef(tall).flatten().std()`` over the finite entries (constant rows have
    no correlation), without the rows x rows matrix: with ``Z`` the centred, unit-norm rows, the
    entries of ``Z Z^T`` sum to ``|Z^T 1|^2`` and their squares to ``|Z^T Z|_F^2``, a cols x cols
    product.
    """
    tall = mat.T if mat.shape[0] < mat.shape[1] else mat
    centred = tall - tall.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    keep = norms > 0
    z = centred[keep] / norms[keep, None]
    n = z.shape[0] ** 2
    if n < 2:
        return torch.zeros((), dtype=mat.dtype)
    total = z.sum(0).square().sum()
    squares = (z.T @ z).square().sum()
    mean = total / n
    return ((squares - n * mean.square()) / (n - 1)).clamp_min(0).sqrt()


def _prepare(weight: torch.Tensor, config: Orthogonalize, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """One block as a matrix of ``dtype`` on the weight's device, with the report's noise added.

    The noise is drawn in float32 on the CPU from ``generator`` whatever ``dtype`` and the device
    are, so a float64 redo and a GPU model see the same noise as a float32 CPU run.
    """
    mat = weight.detach().reshape(weight.shape[0], -1).to(dtype=dtype)
    if mat.device.type == "meta":
        raise ValueError("cannot post-process a weight on the meta device: give its values")
    if config.noise > 0:
        noise = torch.randn(mat.shape, generator=generator, dtype=torch.float32).to(device=mat.device, dtype=dtype)
        mat = mat + config.noise * _correlation_spread(mat) * noise
    return mat


def _finish(new: torch.Tensor, norm: torch.Tensor, weight: torch.Tensor, config: Orthogonalize) -> torch.Tensor:
    rows, cols = new.shape
    if config.scale == "he":
        new = new * math.sqrt(2.0 * rows / min(rows, cols))
    elif config.scale == "predicted":
        new = new * (norm / math.sqrt(min(rows, cols)))
    return new.reshape(weight.shape).to(device=weight.device, dtype=weight.dtype)


def _transform_all(blocks: list[torch.Tensor], config: Orthogonalize, generator: torch.Generator) -> list[torch.Tensor]:
    """Post-process square blocks / conv-linear weights.

    Float32 (float64 weights stay float64), with the QRs of same-shaped blocks run as one batch; a
    block whose QR is ill-conditioned is redone from its weight in float64 with the same noise, so
    every result matches the float64 definition.
    """
    fast = torch.float64 if any(w.dtype == torch.float64 for w in blocks) else torch.float32
    states, mats = [], []
    for w in blocks:  # noise drawn in layer order, as the float64 definition does
        states.append(generator.get_state())
        mats.append(_prepare(w, config, generator, fast))
    norms = [w.detach().reshape(w.shape[0], -1).double().norm() for w in blocks]
    if not config.orthogonal:
        new = [m / m.norm().clamp_min(1e-12) * math.sqrt(min(m.shape)) for m in mats]  # an orthogonal matrix's norm
        return [_finish(n, norm, w, config) for n, norm, w in zip(new, norms, blocks)]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, mat in enumerate(mats):
        by_shape.setdefault(tuple(mat.shape), []).append(i)
    new: list[torch.Tensor] = [None] * len(mats)  # type: ignore[no-redef]
    for indices in by_shape.values():
        qs, bad = _orthogonal_factor(torch.stack([mats[i] for i in indices]))
        for i, q, redo in zip(indices, qs, bad.tolist()):
            if redo and fast != torch.float64:
                replay = torch.Generator().set_state(states[i])
                q = _orthogonal_factor(_prepare(blocks[i], config, replay, torch.float64))[0]
            new[i] = q  # squared Frobenius norm min(rows, cols)
    return [_finish(n, norm, w, config) for n, norm, w in zip(new, norms, blocks)]


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
    pending: list[tuple[str, int, torch.Tensor]] = []  # (name, number of blocks, value)
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
        pending.append((name, blocks, value))
    parts = [part for _, blocks, value in pending for part in (value.chunk(blocks, dim=0) if blocks > 1 else (value,))]
    done = iter(_transform_all(parts, config, generator))
    for name, blocks, _ in pending:
        out[name] = torch.cat([next(done) for _ in range(blocks)], dim=0)
    return {name: out[name] for name, _ in layers if name in out}


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
