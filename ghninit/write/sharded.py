"""Models sharded across processes (FSDP2 ``fully_shard``, tensor parallel): each rank writes its own shard.

A model whose parameters are ``DTensor``s keeps only a shard of each parameter per process, but
its global shapes are known everywhere, and a GHN's prediction depends only on them. So every
rank traces a *meta twin* (:func:`meta_twin`: the same module tree with the original classes, no
hooks, and meta tensors of the global shapes), predicts every tensor (deterministic, so each rank
gets the same values), and :func:`stage_shards` builds the full predicted tensor of one parameter
at a time and keeps only the chunk that the parameter's placements give this rank
(``distribute_tensor(full, mesh, placements, src_data_rank=None).to_local()``). The extra memory of
a rank is its staged shards plus the largest single tensor, never the model. :class:`RankAgreement`
makes the write all-or-nothing across ranks: every rank says whether it got this far, and only
when all did does any rank copy its staged shards into its parameters. FSDP1
(``FullyShardedDataParallel``) flattens parameters into shards with no global view and is refused
with :func:`check_not_fsdp1`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ShardedModelError
from .tensors import tile

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (a parameter sharded or replicated over a mesh)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def sharded_parameters(model: nn.Module) -> list[str]:
    """Names of ``model``'s ``DTensor`` parameters (FSDP2 ``fully_shard`` or ``parallelize_module``)."""
    return [name for name, p in model.named_parameters() if is_dtensor(p)]


def reshard_fsdp(model: nn.Module) -> None:
    """Put every FSDP2 module of ``model`` back in its sharded state (``FSDPModule.reshard()``).

    After a forward pass FSDP2 may leave a module's parameters unsharded (the root's are by
    default): plain tensors registered in place of the ``DTensor`` shards, freed at the next
    reshard. Values written into those would be lost, so the shards are registered again first.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch built without distributed
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def check_not_fsdp1(model: nn.Module) -> None:
    """Refuse FSDP1 (``FullyShardedDataParallel``), whose flat shards have no per-parameter global view.

    Raises:
        ShardedModelError: naming the wrapped module, with the fixes that work for FSDP1.
    """
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return
    for path, module in model.named_modules():
        if isinstance(module, FullyShardedDataParallel):
            raise ShardedModelError(
                f"module '{path or '<root>'}' is FullyShardedDataParallel (FSDP1), which flattens parameters into "
                "shards that have no per-parameter global shape, so a GHN cannot predict them. Fix: call "
                "ghninit.initialize(model, ...) on the plain model before wrapping it (on every rank: the prediction "
                "is deterministic, so every rank gets the same parameters), or, for a model too large for one process, "
                "shard it with FSDP2 (torch.distributed.fsdp.fully_shard) instead: build it on torch.device('meta'), "
                "fully_shard it, model.to_empty(device=...), then ghninit.initialize(model, ...) writes its DTensor "
                "parameters in place, each rank its own shard."
            )


def _original_class(module: nn.Module) -> type:
    """The user's class of ``module``: FSDP2 swaps in ``FSDP<Class>(FSDPModule, <Class>)``."""
    cls = type(module)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return cls
    while issubclass(cls, FSDPModule) and cls is not FSDPModule:
        bases = [b for b in cls.__bases__ if not (isinstance(b, type) and issubclass(b, FSDPModule))]
        if not bases:
            break
        cls = bases[0]
    return cls


def _meta_like(tensor: torch.Tensor) -> torch.Tensor:
    """A meta tensor of ``tensor``'s global shape and dtype."""
    return torch.empty(tuple(tensor.shape), dtype=tensor.dtype, device="meta")


def meta_twin(model: nn.Module) -> nn.Module:
    """An unsharded stand-in of ``model`` on the meta device, to trace and to check shapes against.

    Every module becomes a new object of its original class (FSDP2's ``FSDP<Class>`` wrapper class
    removed) sharing the original's plain attributes, with no hooks (FSDP2's all-gathers,
    tensor-parallel redistributions), and with every parameter and buffer replaced by a meta tensor
    of its *global* shape. Tied parameters and shared submodules stay tied; ``model`` is not changed.
    """
    tensors: dict[int, torch.Tensor] = {}
    modules: dict[int, nn.Module] = {}

    def twin_tensor(t: torch.Tensor | None, parameter: bool) -> torch.Tensor | None:
        if t is None:
            return None
        if id(t) not in tensors:
            meta = _meta_like(t)
            tensors[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if parameter else meta
        return tensors[id(t)]

    def twin(m: nn.Module) -> nn.Module:
        if id(m) in modules:
            return modules[id(m)]
        cls = _original_class(m)
        new = cls.__new__(cls)
        new.__dict__.update(m.__dict__)
        modules[id(m)] = new
        for hooks in _HOOK_DICTS:
            if hooks in m.__dict__:
                new.__dict__[hooks] = type(m.__dict__[hooks])()
        new.__dict__["_parameters"] = {n: twin_tensor(p, True) for n, p in m._parameters.items()}
        new.__dict__["_buffers"] = {n: twin_tensor(b, False) for n, b in m._buffers.items()}
        new.__dict__["_modules"] = {n: None if c is None else twin(c) for n, c in m._modules.items()}
        for flag in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            new.__dict__.pop(flag, None)
        return new

    return twin(model)


def local_device(model: nn.Module) -> torch.device:
    """Where this rank's shards live: the local tensor of the first ``DTensor`` parameter."""
    for p in model.parameters():
        if is_dtensor(p):
            return p.to_local().device
    return next(model.parameters()).device


def check_materialized(model: nn.Module) -> None:
    """Refuse a sharded model whose shards are still on the meta device (nothing to write into).

    Raises:
        ValueError: saying to allocate the shards with ``to_empty`` first.
    """
    for name, p in model.named_parameters():
        local = p.to_local() if is_dtensor(p) else p
        if local.is_meta:
            raise ValueError(
                f"{type(model).__name__}: parameter '{name}' is sharded but still on the meta device, so there is "
                "nothing to write into. Fix: allocate the shards first, e.g. model.to_empty(device='cpu') (or "
                "'cuda') after fully_shard / parallelize_module, then call ghninit.initialize(model, ...); "
                "parameters the GHN does not predict keep what to_empty left (call the modules' reset_parameters() "
                "before initialize if you need them initialised)."
            )


@dataclass
class Staged:
    """Local shards computed for one rank, not yet written.

    Attributes:
        values: parameter name -> this rank's chunk (or the whole tensor for a parameter that is
            not a ``DTensor``), in the parameter's dtype and on its local device.
        layout: parameter name -> ``(global shape, local shape, placements)`` for the report.
        postprocessed: names whose full tensor was post-processed before it was split.
    """

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    layout: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = field(default_factory=dict)
    postprocessed: list[str] = field(default_factory=list)


# The measured alternative to every rank computing every full tensor: this rank alone computes them and
# scatters each rank its chunk (distribute_tensor(src_data_rank=...)). Used by benchmarks/sharded_memory.py
# --scatter only: a rank failing mid-way would leave the others waiting in a scatter, so it is not the default.
SCATTER_FROM: int | None = None


def _local_chunk(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's chunk of ``full`` under ``param``'s placements, a copy that does not keep ``full`` alive."""
    if not is_dtensor(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank has the same full tensor, so each takes its chunk with no communication.
    local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=SCATTER_FROM).to_local()
    shares = local.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
    return local.clone() if shares and local.numel() < full.numel() else local


def _describe_placements(param: torch.Tensor) -> str:
    if not is_dtensor(param):
        return "whole (not a DTensor)"
    mesh = tuple(param.device_mesh.shape)
    return f"{', '.join(repr(p) for p in param.placements)} over mesh {mesh}"


@torch.no_grad()
def stage_shards(
    model: nn.Module,
    ready: Mapping[str, torch.Tensor],
    transform: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None,
) -> Staged:
    """This rank's chunk of every predicted parameter, one full tensor at a time; writes nothing.

    Args:
        model: the sharded model (``DTensor`` parameters; plain ones are staged whole).
        ready: parameter name -> prepared block (validated against the global shapes, in the
            parameter's dtype and on this rank's device), tiled here to the global shape.
        transform: called with ``(name, full tensor)`` in parameter order; returns a replacement
            (post-processing) or ``None`` to keep the tensor.

    Returns:
        the staged local shards, their layout and what was post-processed.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    staged = Staged()
    for name in names_in_order(model, ready):
        param = params[name]
        if SCATTER_FROM is not None and is_dtensor(param) and _world()[0] != SCATTER_FROM:
            # torch.empty: pages never written, so the placeholder costs address space, not resident memory
            full = torch.empty(tuple(param.shape), dtype=ready[name].dtype, device=ready[name].device)
        else:
            full = tile(ready[name], tuple(param.shape))
            if transform is not None:
                new = transform(name, full)
                if new is not None:
                    full = new
                    staged.postprocessed.append(name)
        local = _local_chunk(full.contiguous(), param)
        expected = param.to_local() if is_dtensor(param) else param
        if tuple(local.shape) != tuple(expected.shape):  # pragma: no cover - DTensor's own invariant
            raise ShardedModelError(
                f"'{name}': the chunk of the predicted {tuple(param.shape)} tensor for this rank has shape "
                f"{tuple(local.shape)}, but the local shard is {tuple(expected.shape)}"
            )
        staged.values[name] = local.to(device=expected.device, dtype=expected.dtype)
        staged.layout[name] = (tuple(param.shape), tuple(local.shape), _describe_placements(param))
        del full, local
    if SCATTER_FROM is not None and _world()[1] > 1:
        import torch.distributed as dist

        done = [staged.postprocessed]
        dist.broadcast_object_list(done, src=SCATTER_FROM)
        staged.postprocessed = done[0]
    return staged


@torch.no_grad()
def commit(model: nn.Module, staged: Staged) -> None:
    """Copy the staged chunks into this rank's local shards (call only after :class:`RankAgreement`)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in staged.values.items():
        param = params[name]
        (param.to_local() if is_dtensor(param) else param).copy_(value)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class RankAgreement(contextlib.AbstractContextManager):
    """All-or-nothing across ranks: leaving the block, every rank learns whether every rank got through it.

    Use it around everything that can fail before a sharded write, and write only after it::

        with RankAgreement():
            staged = stage_shards(...)
        commit(model, staged)

    On leaving, each rank all-gathers ``None`` (success) or its error message over the default
    process group, so every rank of it must call ``initialize`` (as with any collective). A rank
    whose own block raised re-raises its error; a rank that succeeded while another failed raises
    :class:`ShardedModelError` naming the failed ranks and their errors. Either way nothing is
    written.
    """

    def __init__(self) -> None:
        self.rank, self.world_size = _world()

    def __exit__(self, kind, error, traceback) -> bool:
        if self.world_size == 1:
            return False
        import torch.distributed as dist

        mine = None if error is None else f"{kind.__name__}: {error}"
        everyone: list[str | None] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        if error is not None:
            return False  # this rank's own error propagates
        failed = [(r, e) for r, e in enumerate(everyone) if e is not None]
        if failed:
            detail = "; ".join(f"rank {r}: {e}" for r, e in failed)
            raise ShardedModelError(
                f"ghninit.initialize failed on {len(failed)} of {self.world_size} ranks, so no rank changed any "
                f"parameter (rank {self.rank} had its shards ready): {detail}"
            )
        return False


def names_in_order(model: nn.Module, names: Iterable[str]) -> list[str]:
    """``names`` sorted by their parameters' position in ``model.parameters()``."""
    params = dict(model.named_parameters(remove_duplicate=False))
    order = {id(p): i for i, p in enumerate(model.parameters())}
    return sorted(names, key=lambda n: order[id(params[n])])
