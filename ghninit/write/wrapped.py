"""Models inside wrappers: ``torch.compile``, ``DataParallel`` and ``DistributedDataParallel``.

These wrappers hold the user's module and share its parameters, so :func:`ghninit.initialize`
works on the module inside (parameter names in the report are the inner module's). Sharded
wrappers (FSDP, ``fully_shard``, DTensor parameters) keep only a shard of each parameter per
process, so a GHN cannot see the whole tensor: those are refused with an error that says to call
``initialize`` before wrapping.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import ShardedModelError


def _compiled_types() -> tuple[type, ...]:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return ()
    return (OptimizedModule,)


def _sharded_types() -> tuple[type, ...]:
    types: list[type] = []
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        types.append(FullyShardedDataParallel)
    except ImportError:  # pragma: no cover - torch built without distributed
        pass
    try:
        from torch.distributed.fsdp import FSDPModule  # fully_shard (FSDP2)

        types.append(FSDPModule)
    except ImportError:  # pragma: no cover - older torch
        pass
    return tuple(types)


def _is_dtensor(tensor: object) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(tensor, DTensor)


def check_not_sharded(model: nn.Module) -> None:
    """Raise :class:`ShardedModelError` if any part of ``model`` is sharded (FSDP, FSDP2, DTensor)."""
    sharded = _sharded_types()
    for path, module in model.named_modules():
        if sharded and isinstance(module, sharded):
            what = f"module '{path or '<root>'}' is {type(module).__name__} (FSDP)"
            break
    else:
        name = next((n for n, p in model.named_parameters() if _is_dtensor(p)), None)
        if name is None:
            return
        what = f"parameter '{name}' is a DTensor"
    raise ShardedModelError(
        f"{what}: its parameters are sharded across processes, so a GHN cannot predict them whole. "
        "Fix: call ghninit.initialize(model, ...) on the plain model first (on every rank: the prediction "
        "is deterministic), then wrap it with FSDP / fully_shard."
    )


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The module inside compile / DataParallel / DDP wrappers, and the wrappers' class names, outermost first.

    Raises:
        ShardedModelError: if the model or anything inside it is sharded.
    """
    wrappers: list[str] = []
    compiled = _compiled_types()
    while True:
        if compiled and isinstance(model, compiled):
            inner = model._orig_mod
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            inner = model.module
        else:
            break
        wrappers.append(type(model).__name__)
        model = inner
    check_not_sharded(model)
    return model, wrappers
