"""Models inside wrappers: ``torch.compile``, ``DataParallel`` and ``DistributedDataParallel``.

These wrappers hold the user's module and share its parameters, so :func:`ghninit.initialize`
works on the module inside (parameter names in the report are the inner module's). Models
sharded with FSDP2 (``fully_shard``) or tensor parallelism keep ``DTensor`` parameters, which
:mod:`ghninit.write.sharded` writes in place, each rank its own shard; FSDP1
(``FullyShardedDataParallel``) is refused there with an error that says how to initialise it.
"""

from __future__ import annotations

import torch.nn as nn

from .sharded import check_not_fsdp1


def _compiled_types() -> tuple[type, ...]:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return ()
    return (OptimizedModule,)


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The module inside compile / DataParallel / DDP wrappers, and the wrappers' class names, outermost first.

    Raises:
        ShardedModelError: if the model or anything inside it is FSDP1 (``FullyShardedDataParallel``).
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
    check_not_fsdp1(model)
    return model, wrappers
