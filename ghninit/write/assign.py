"""All-or-nothing assignment of predicted tensors into a model, and BatchNorm statistics reset.

Every tensor is checked (known parameter, exact shape, finite values) and converted to the
parameter's device and dtype before the first write, so the writes themselves cannot fail
halfway: either every reported parameter is written or the model is untouched. A parametrized
weight (``torch.nn.utils.parametrize``) is checked against the tensor its module computes, and
written through :mod:`ghninit.write.parametrized`; 2-D kernels predicted for 3-D convolutions are
inflated, and those predicted for 1-D convolutions collapsed, by :func:`inflate_blocks`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from ..errors import PredictionError
from .parametrized import current_value, parametrized_tensors
from .tensors import collapse, inflate, tiles_into, write_tiled


def prepare(
    model: nn.Module, blocks: Mapping[str, torch.Tensor], device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Validate predicted blocks against ``model`` and convert them; raises :class:`PredictionError`.

    A block is the parameter itself or a smaller tensor that tiles into it (see
    :func:`ghninit.write.tensors.tile`). Any name of a parameter counts, tied names included, but one
    tensor may be predicted only once. Blocks go to ``device`` if given (a model about to be
    materialised from the meta device), else to their parameter's device, in its dtype.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    owners = parametrized_tensors(model)
    ready: dict[str, torch.Tensor] = {}
    written: dict[int, str] = {}
    for name, value in blocks.items():
        if name in owners:  # a parametrized weight: checked against what the module computes
            module, tensor_name = owners[name]
            with torch.no_grad():
                target = getattr(module, tensor_name)
            key = id(module.parametrizations[tensor_name])
        elif name in params:
            target = params[name]
            key = id(target)
        else:
            raise PredictionError(f"predicted tensor '{name}' is not a parameter of {type(model).__name__}")
        if key in written:
            raise PredictionError(f"'{name}' and '{written[key]}' are one tied parameter and were predicted twice")
        written[key] = name
        if not tiles_into(value.shape, target.shape):
            raise PredictionError(
                f"predicted tensor for '{name}' has shape {tuple(value.shape)}, which does not tile into "
                f"the parameter's {tuple(target.shape)}"
            )
        value = value.detach().to(device=device or target.device, dtype=target.dtype)
        # NaN and inf propagate into the sum: one pass, after the cast (which can overflow in float16),
        # summed in at least float32 so that a long float16 sum cannot overflow by itself.
        if not torch.isfinite(value.sum(dtype=torch.promote_types(value.dtype, torch.float32))):
            raise PredictionError(
                f"predicted tensor for '{name}' has NaN or infinite values (in {target.dtype}); check the GHN weights"
            )
        ready[name] = value
    return ready


def inflate_blocks(model: nn.Module, blocks: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Turn the 2-D kernels predicted for 3-D and 1-D convolution weights into their own shapes.

    A 4-D block for a 5-D parameter ``(out, in, T, kh, kw)`` becomes ``(out', in', T, kh', kw')`` (the
    I3D rule, :func:`ghninit.write.tensors.inflate`); a 4-D block for a 3-D parameter
    ``(out, in, k)`` becomes ``(out', in', k')`` (its rows summed, :func:`ghninit.write.tensors.collapse`);
    every other block passes through unchanged.

    Returns:
        the blocks, and the names of the parameters whose kernels were inflated or collapsed.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    owners = parametrized_tensors(model)
    out: dict[str, torch.Tensor] = {}
    inflated: list[str] = []
    for name, block in blocks.items():
        target = params.get(name)
        if target is None and name in owners:
            target = current_value(model, name)
        if target is not None and block.dim() == 4 and target.dim() == 5:
            block = inflate(block, target.shape[2])
            inflated.append(name)
        elif target is not None and block.dim() == 4 and target.dim() == 3:
            block = collapse(block, target.shape[2])
            inflated.append(name)
        out[name] = block
    return out, inflated


@torch.no_grad()
def write(model: nn.Module, blocks: Mapping[str, torch.Tensor]) -> None:
    """Write prepared blocks into the model's parameters in place, tiling them to shape."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in blocks.items():
        write_tiled(params[name], value)


def reset_batchnorm_statistics(model: nn.Module) -> None:
    """Reset running mean/var of every BatchNorm layer; their configuration is left as it was."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            module.reset_running_stats()
