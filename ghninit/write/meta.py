"""Where a model's tensors live, and materialising a model built on the ``meta`` device.

A model built under ``torch.device("meta")`` has shapes but no memory, so building it costs
nothing and skips the default initialisation. :func:`materialize` allocates it on a real device
with ``to_empty`` and fills every tensor exactly once: the GHN's predictions for what it covers,
the model's own ``reset_parameters`` (and timm's ``init_non_persistent_buffers``) for modules
whose tensors the GHN does not cover, BatchNorm running statistics reset, and a documented
fallback for parameters that no module can initialise. Buffers that are computed only when the
model is built and that nothing can recompute make materialising impossible; that is detected
before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn

from .assign import write

_NORM = nn.modules.batchnorm._NormBase


def _tensors(model: nn.Module):
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def target_device(model: nn.Module, device: str | torch.device | None) -> torch.device | None:
    """The device to materialise ``model`` on, or ``None`` when it is already on a real device.

    Raises:
        ValueError: for a mix of meta and real tensors, for a meta model without ``device``, for
            ``device="meta"``, and for ``device`` that differs from where a real model lives.
    """
    meta = next((n for n, t in _tensors(model) if t.is_meta), None)
    real = next(((n, t.device) for n, t in _tensors(model) if not t.is_meta), None)
    kind = type(model).__name__
    if meta is not None and real is not None:
        raise ValueError(
            f"{kind} has tensors on the meta device ('{meta}') and on {real[1]} ('{real[0]}'): ghninit "
            "initialises a model that is wholly on real devices, or wholly on meta (with device=). Fix: "
            "build it all under torch.device('meta') and pass device=, or move it to a real device first."
        )
    if meta is None:
        if device is not None and real is not None and torch.device(device) != real[1]:
            raise ValueError(
                f"device={device!r} is for models built on the meta device; {kind} is on {real[1]} "
                f"('{real[0]}'). Fix: leave device= out, or move the model with model.to({str(device)!r})."
            )
        return None
    if device is None:
        raise ValueError(
            f"{kind} is on the meta device ('{meta}' has no data), so there is nothing to write into. "
            "Fix: pass device='cpu' (or 'cuda') to materialise it with predicted parameters, "
            "e.g. ghninit.initialize(model, dataset=..., device='cpu')."
        )
    device = torch.device(device)
    if device.type == "meta":
        raise ValueError("device='meta': pass the real device to materialise the model on, e.g. device='cpu'")
    _check_buffers_recoverable(model)
    return device


def _own_buffers_reinitialised(module: nn.Module) -> bool:
    return (
        isinstance(module, _NORM)
        or hasattr(module, "init_non_persistent_buffers")
        or hasattr(module, "reset_parameters")
    )


def _check_buffers_recoverable(model: nn.Module) -> None:
    for path, module in model.named_modules():
        names = [n for n, _ in module.named_buffers(recurse=False)]
        if names and not _own_buffers_reinitialised(module):
            full = f"{path}.{names[0]}" if path else names[0]
            raise ValueError(
                f"buffer '{full}' of {type(module).__name__} is computed when the model is built, and "
                f"{type(module).__name__} has no reset_parameters() or init_non_persistent_buffers() to "
                "recompute it, so the model cannot be materialised from the meta device. Fix: build the model "
                "on a real device (or give that module a reset_parameters())."
            )


def materialize(model: nn.Module, device: torch.device, ready: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Allocate a meta ``model`` on ``device`` and fill it; ``ready`` are prepared predicted blocks.

    Returns:
        parameter name -> how it was initialised, for every parameter not in ``ready``.

    If anything fails, the model is put back on the meta device (it had no data before).
    """
    model.to_empty(device=device)
    try:
        # to_empty replaced the tensors: map the predicted names to the new objects
        params = dict(model.named_parameters(remove_duplicate=False))
        predicted = {id(params[name]) for name in ready}
        how = _initialise_rest(model, predicted)
        write(model, ready)
    except BaseException:
        model.to_empty(device="meta")
        raise
    return how


def _initialise_rest(model: nn.Module, predicted: set[int]) -> dict[str, str]:
    """Give every tensor the GHN does not write a value; returns what was done per parameter."""
    how: dict[str, str] = {}
    done: set[int] = set(predicted)
    for path, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        missing = [(n, p) for n, p in own if id(p) not in done]
        has_buffers = any(True for _ in module.named_buffers(recurse=False))
        if isinstance(module, _NORM) and not missing:
            if module.track_running_stats:
                module.reset_running_stats()
        elif (missing or has_buffers) and hasattr(module, "reset_parameters"):
            module.reset_parameters()
            for n, p in missing:
                how[_join(path, n)] = f"materialised from meta: {type(module).__name__}.reset_parameters()"
                done.add(id(p))
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    for name, p in model.named_parameters():
        if id(p) not in done:
            how[name] = _fallback(p)
    return how


@torch.no_grad()
def _fallback(p: torch.Tensor) -> str:
    """Initialise a parameter no module can initialise; returns the reason for the report."""
    prefix = "materialised from meta; its module has no reset_parameters(), so "
    if p.dim() >= 2 and p.shape[0] > 1 and math.prod(p.shape[1:]) > 1:  # a weight matrix or kernel
        nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        return prefix + "kaiming_uniform(a=sqrt(5)) as nn.Linear/Conv2d"
    if p.dim() >= 2 and p.shape[0] == 1 and p.numel() > p.shape[-1]:  # (1, tokens, width): a position embedding
        nn.init.trunc_normal_(p, std=0.02)
        return prefix + "trunc_normal(std=0.02) as timm's position embeddings"
    # vector-like: class tokens, layer scales, biases
    nn.init.zeros_(p)
    return prefix + "zeros (token, scale or bias)"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
