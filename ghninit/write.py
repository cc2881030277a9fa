"""All-or-nothing assignment of predicted tensors into a model, and BatchNorm statistics reset.

Every tensor is checked (known parameter, exact shape, finite values) and converted to the
parameter's device and dtype before the first write, so the writes themselves cannot fail
halfway: either every reported parameter is written or the model is untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .tensors import tiles_into, write_tiled


class PredictionError(ValueError):
    """A predicted tensor cannot be written; the model was left untouched."""


def prepare(model: nn.Module, blocks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate predicted blocks against ``model`` and convert them; raises :class:`PredictionError`.

    A block is the parameter itself or a smaller tensor that tiles into it (see
    :func:`ghninit.tensors.tile`).
    """
    params = dict(model.named_parameters())
    ready = {}
    for name, value in blocks.items():
        if name not in params:
            raise PredictionError(f"predicted tensor '{name}' is not a parameter of {type(model).__name__}")
        target = params[name]
        if not tiles_into(value.shape, target.shape):
            raise PredictionError(
                f"predicted tensor for '{name}' has shape {tuple(value.shape)}, which does not tile into "
                f"the parameter's {tuple(target.shape)}"
            )
        if not torch.isfinite(value.sum()):  # NaN and inf propagate into the sum: one pass
            raise PredictionError(f"predicted tensor for '{name}' has NaN or infinite values; check the GHN weights")
        ready[name] = value.detach().to(device=target.device, dtype=target.dtype)
    return ready


@torch.no_grad()
def write(model: nn.Module, blocks: Mapping[str, torch.Tensor]) -> None:
    """Write prepared blocks into the model's parameters in place, tiling them to shape."""
    params = dict(model.named_parameters())
    for name, value in blocks.items():
        write_tiled(params[name], value)


def reset_batchnorm_statistics(model: nn.Module) -> None:
    """Reset running mean/var of every BatchNorm layer; their configuration is left as it was."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            module.reset_running_stats()
