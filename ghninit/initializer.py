"""``initialize``: predict a model's parameters with a GHN and write them in place."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from .errors import TraceError
from .ghn import GHNBase
from .ghn.presets import DATASET_SHAPES
from .graph.example_inputs import example_call
from .report import Report, every_name, start_advice
from .write.assign import inflate_blocks, prepare, reset_batchnorm_statistics, write
from .write.meta import materialize, target_device
from .write.parametrized import Inversion, leave_parametrized, through_right_inverse
from .write.postprocess import Orthogonalize, plan, resolve_postprocess
from .write.sharded import (
    RankAgreement,
    check_materialized,
    commit,
    local_device,
    meta_twin,
    reshard_fsdp,
    sharded_parameters,
    stage_shards,
)
from .write.wrapped import unwrap
from .zoo.hub import load_ghn


def initialize(
    model: nn.Module,
    dataset: str | None = None,
    *,
    ghn: GHNBase | str | os.PathLike | None = None,
    keep_classifier: bool | None = None,
    leaf_modules: Iterable[type] = (),
    postprocess: bool | str | Orthogonalize | None = None,
    device: str | torch.device | None = None,
    example_inputs: Any = None,
) -> Report:
    """Initialise ``model`` in place with parameters predicted by a GHN (GHN-2 or GHN-3).

    Args:
        model: any ``nn.Module`` (traced by torch.fx, with an example input where needed; see
            ``example_inputs`` and ``leaf_modules``); a ``torch.compile``,
            ``DataParallel`` or ``DistributedDataParallel`` wrapper is looked through (the module
            inside is initialised; it owns the same parameters). A model sharded with FSDP2
            (``fully_shard``) or tensor parallelism (``DTensor`` parameters, allocated with
            ``to_empty``) is written in place, each rank its own shard: call ``initialize`` on every
            rank; if any rank fails, no rank changes anything (``docs/sharded.md``). FSDP1
            (``FullyShardedDataParallel``) is refused: initialise before wrapping.
        dataset: name of a GHN: ``"cifar10-mini"`` (shipped, no network) or a published one
            (``"imagenet"``, ``"cifar10"``, ...; see :func:`ghninit.list_ghns`). Give this or ``ghn``.
        ghn: a loaded :class:`GHN2` or :class:`GHN3`, or anything :func:`ghninit.load_ghn` accepts
            (e.g. "ghn3-t", a published GHN-3 file, a folder).
        keep_classifier: ``None`` (default) predicts the classifier only when its output size
            equals the GHN's number of classes; ``True`` always keeps the model's own classifier;
            ``False`` always predicts it (tiled to the model's classes).
        leaf_modules: module types not to trace into (their parameters keep their init).
        postprocess: post-process the predicted conv/linear weights before writing them (see
            :mod:`ghninit.write.postprocess`): ``None`` (default, none), ``True`` or ``"orth"`` (the recipe
            of Knyazev, arXiv 2207.10049: orthogonalise every predicted conv/linear weight but the
            classifier; use it before fine-tuning), ``"orth-he"`` (the same with He's norms) or an
            :class:`Orthogonalize`.
        device: only for a model built on the ``meta`` device: allocate it there (``"cpu"``,
            ``"cuda"``), write the predicted tensors, and initialise the rest with the modules' own
            ``reset_parameters``; the report says how each parameter was filled.
        example_inputs: what to call the model with where an input is needed: a tuple of
            ``forward``'s positional arguments, a dict of its keyword arguments, or one tensor (on
            the model's device, which may be ``meta``). With it, the model is traced by running it
            on these instead of symbolically; without it, a model torch.fx cannot trace
            symbolically is run on an inferred example input (see ``docs/tracing.md``). Lazy
            modules (``nn.LazyLinear``...) are materialised with one forward pass on it before
            prediction; without it, on a random image of the GHN's input size (``(1, 3, 32, 32)``
            for a CIFAR-10 GHN, ``(1, 3, 224, 224)`` for ImageNet).

    Returns:
        a :class:`Report`; ``print(report)`` summarises it.

    Tied parameters (one tensor under several names) are predicted once, at their first use in
    graph order; ``report.shared`` lists their other names. The model's train/eval mode and
    BatchNorm settings are kept; BatchNorm running statistics are reset. If anything fails, no
    parameter is changed.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"initialize() expected an nn.Module, got {type(model).__name__}: {model!r:.80}")
    if dataset is not None and ghn is not None:
        raise ValueError(
            f"initialize() got both dataset={dataset!r} and ghn=: give one of them "
            "(dataset names a GHN; ghn is a loaded GHN, a path or a Hub repo)"
        )
    module, wrappers = unwrap(model)
    reshard_fsdp(module)  # after a forward pass FSDP2 may hold unsharded copies; write the shards
    sharded = bool(sharded_parameters(module))
    traced, staged = module, None
    with RankAgreement() if sharded else contextlib.nullcontext():
        if sharded:  # FSDP2 / tensor parallel: trace an unsharded meta twin, write each rank's shards
            check_materialized(module)
            traced = meta_twin(module)
        materialize_on = _sharded_device(module, device) if sharded else target_device(module, device)
        post = resolve_postprocess(postprocess)
        ghn, source = _resolve_ghn(ghn, dataset)
        lazy = materialize_lazy(traced, example_inputs, ghn_image_size(ghn))
        graph = ghn.build_graph(traced, leaf_modules, example_inputs=example_inputs)
        t_graph = time.perf_counter()
        if keep_classifier is None:
            predict_classifier = ghn.classifier_matches(graph)
        else:
            predict_classifier = not keep_classifier
        with torch.inference_mode(False), torch.no_grad():
            blocks = {name: block for name, (block, _) in ghn.predict_blocks(graph, predict_classifier).items()}
            t_predict = time.perf_counter()
            blocks, inflated = inflate_blocks(traced, blocks)
            collapsed = [n for n in inflated if blocks[n].dim() == 3]  # 1-D kernels; the others are 3-D
            ready = prepare(traced, blocks, materialize_on)
            classifier = [graph.nodes[i].param for i in graph.classifier if i is not None]
            t_post = 0.0  # a sharded model's post-processing runs inside stage_shards, counted in write
            if sharded:
                inversion = leave_parametrized(
                    traced, ready, "parametrized weight of a sharded model: not written through right_inverse"
                )
                ready = inversion.ready
                staged = stage_shards(module, ready, _sharded_postprocess(traced, post, classifier))
                post_done = staged.postprocessed
                materialized = {}
            else:
                if post is not None:
                    t_post = time.perf_counter()
                    post_done = plan(module, post, values=ready, only=ready, classifier=classifier[:1] or None)
                    ready.update(post_done)
                    t_post = time.perf_counter() - t_post
                inversion = _through_parametrizations(module, ready, materialize_on)
                ready = inversion.ready
                materialized = materialize(module, materialize_on, ready) if materialize_on else {}
                if not materialize_on:
                    try:
                        write(module, ready)
                    except BaseException:
                        inversion.undo()
                        raise
                inversion.commit()
    with torch.inference_mode(False), torch.no_grad():
        if staged is not None:  # every rank staged its shards: now, and only now, write them
            commit(module, staged)
        reset_batchnorm_statistics(module)
    end = time.perf_counter()

    skipped = {name: why for name, why in graph.uncovered.items() if name not in inversion.written_through}
    skipped.update(inversion.skipped)
    if not predict_classifier:
        for i in graph.classifier:
            if i is not None:
                skipped[graph.nodes[i].param] = (
                    "classifier kept (keep_classifier or class count differs from the GHN's)"
                )
    names = _names_by_tensor(module)
    skipped, shared = every_name(skipped, {n: names_ for n, (_, names_) in names.items()}, ready)
    for name, how in materialized.items():
        skipped[name] = f"{skipped[name]}; {how}" if name in skipped else how
    params = dict(module.named_parameters())
    skipped = {name: why for name, why in skipped.items() if name in names}  # parametrized names: their originals
    report = Report(
        model=type(traced).__name__,
        ghn=source,
        predicted=list(ready),
        n_params_predicted=sum(names[n][0].numel() for n in ready),
        n_params_total=sum(p.numel() for p in params.values()),
        skipped=skipped,
        classifier_predicted=predict_classifier and any(i is not None for i in graph.classifier),
        n_nodes=len(graph),
        postprocess=post.describe() if post is not None else None,
        postprocessed=list(post_done) if post is not None else [],
        seconds={
            "graph": t_graph - start,
            "predict": t_predict - t_graph,
            **({"postprocess": t_post} if post is not None else {}),
            "write": end - t_predict - t_post,
            "total": end - start,
        },
        shared=shared,
        wrappers=wrappers,
        materialized_on=str(materialize_on) if materialize_on and not sharded else None,
        inflated=[n for n in inflated if (n in ready or n in inversion.written_through) and n not in collapsed],
        collapsed=[n for n in collapsed if n in ready or n in inversion.written_through],
        parametrized=inversion.written_through,
        lazy=lazy,
        n_outputs=graph.n_outputs,
        skipped_families=skipped_families(module, skipped),
        tracing=graph.tracing,
        advice=start_advice(sum(names[n][0].numel() for n in ready), post.describe() if post is not None else None),
        sharded=dict(staged.layout) if staged is not None else {},
        rank=_rank() if staged is not None else None,
        inputs=graph.inputs,
    )
    warning = report.coverage_warning()
    if warning:
        warnings.warn(f"ghninit.initialize: {warning}", UserWarning, stacklevel=2)
    _log_advice_once(report.advice)
    return report


_ADVISED: set[str] = set()
logger = logging.getLogger("ghninit")


def _log_advice_once(advice: str | None) -> None:
    """Log the training advice on the ``ghninit`` logger (stderr by default), once per process."""
    if advice and advice not in _ADVISED:
        _ADVISED.add(advice)
        logger.warning("ghninit: %s", advice)


def _sharded_device(module: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where a sharded model's local shards live; ``device`` must be that or ``None``."""
    local = local_device(module)
    if device is not None and torch.device(device) != local:
        raise ValueError(
            f"device={device!r}: {type(module).__name__} is sharded and its local shards are on {local}; device= is "
            "for models built on the meta device. Fix: leave device= out (allocate the shards with "
            "model.to_empty(device=...) before initialize)."
        )
    return local


def _sharded_postprocess(
    traced: nn.Module, post: Orthogonalize | None, classifier: list[str]
) -> Callable[[str, torch.Tensor], torch.Tensor | None] | None:
    """Post-processing of one full predicted tensor at a time, with the noise stream of one ``plan`` over all."""
    if post is None:
        return None
    generator = torch.Generator().manual_seed(post.seed)

    def one(name: str, full: torch.Tensor) -> torch.Tensor | None:
        done = plan(
            traced, post, values={name: full}, only=[name], classifier=classifier[:1] or None, generator=generator
        )
        return done.get(name)

    return one


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _through_parametrizations(module: nn.Module, ready: dict, materialize_on: torch.device | None) -> Inversion:
    """Parametrized weights in ``ready`` as values for their originals; left alone on a meta-device model."""
    if materialize_on is None:
        return through_right_inverse(module, ready)
    return leave_parametrized(
        module, ready, "parametrized weight of a meta-device model: not written through right_inverse"
    )


def skipped_families(module: nn.Module, skipped: dict[str, str]) -> list[tuple[str, str, int]]:
    """Skipped parameters grouped by (module type, reason), with their sizes, largest first."""
    params = dict(module.named_parameters())
    families: dict[tuple[str, str], int] = {}
    for name, why in skipped.items():
        if name not in params:
            continue
        path = name.rpartition(".")[0]
        if ".parametrizations." in f".{name}":
            path = f".{name}".rpartition(".parametrizations.")[0][1:]
        owner = module.get_submodule(path) if path else module
        kind = type(owner).__name__.removeprefix("Parametrized")
        key = (kind, why)
        families[key] = families.get(key, 0) + params[name].numel()
    return sorted(((k, w, n) for (k, w), n in families.items()), key=lambda f: -f[2])


def ghn_image_size(ghn: nn.Module) -> int:
    """The input size a GHN was trained for, from its largest predicted block (CIFAR-10: 32, ImageNet: 224)."""
    max_shape = tuple(getattr(ghn, "max_shape", ()))
    for shapes in DATASET_SHAPES.values():
        if tuple(shapes["max_shape"]) == max_shape:
            return int(shapes["image_size"])
    return 224


def _lazy_modules(module: nn.Module) -> list[str]:
    from torch.nn.modules.lazy import LazyModuleMixin

    return [
        path or "<root>"
        for path, m in module.named_modules()
        if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
    ]


def materialize_lazy(module: nn.Module, example_inputs: Any, image_size: int) -> str | None:
    """Materialise lazy modules (``nn.LazyLinear``...) with one forward pass; returns what it ran on, or ``None``.

    The pass runs in eval mode without gradients (train/eval modes are restored). Lazy modules
    set their shapes and their own initialisation on their first call, as they would on the
    user's first forward, so this changes no initialised parameter.

    Raises:
        TraceError: when the forward pass fails or leaves a module lazy, saying how to fix it.
    """
    lazy = _lazy_modules(module)
    if not lazy:
        return None
    where = ", ".join(f"'{p}'" for p in lazy[:3]) + (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
    if example_inputs is None:
        from torch.nn.parameter import is_lazy

        device = next((t.device for t in module.parameters() if not is_lazy(t)), torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        image = torch.randn(1, 3, image_size, image_size, generator=generator).to(device)
        args, kwargs = (image,), {}
        described = f"one forward pass on a random (1, 3, {image_size}, {image_size}) image (the GHN's input size)"
    else:
        args, kwargs = example_call(example_inputs)
        described = "one forward pass on example_inputs"
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            module(*args, **kwargs)
    except Exception as err:
        given = "example_inputs" if example_inputs is not None else f"a (1, 3, {image_size}, {image_size}) image"
        raise TraceError(
            f"{type(module).__name__} has lazy modules ({where}) whose shapes are set by their first call, and "
            f"running the model on {given} to materialise them failed: {type(err).__name__}: {err}\n"
            "Fix: pass ghninit.initialize(model, ..., example_inputs=<what model(...) takes>) (a tensor, a tuple "
            "of positional arguments or a dict of keyword arguments), or call the model once on a real batch "
            "before initialize."
        ) from err
    finally:
        for m, training in modes.items():
            m.train(training)
    still = _lazy_modules(module)
    if still:
        raise TraceError(
            f"{type(module).__name__}: lazy modules {', '.join(repr(p) for p in still[:3])} were not called by the "
            "forward pass, so their shapes are unknown. Fix: pass example_inputs= that reach them, or call those "
            "modules once before ghninit.initialize."
        )
    return described


def _names_by_tensor(model: nn.Module) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Every parameter name -> (its tensor, all names of that tensor)."""
    groups: dict[int, list[str]] = {}
    tensors = dict(model.named_parameters(remove_duplicate=False))
    for name, p in tensors.items():
        groups.setdefault(id(p), []).append(name)
    return {name: (p, groups[id(p)]) for name, p in tensors.items()}


def _resolve_ghn(ghn: GHNBase | str | os.PathLike | None, dataset: str | None) -> tuple[GHNBase, str]:
    if isinstance(ghn, GHNBase):
        return ghn, getattr(ghn, "source", f"{type(ghn).__name__} instance")
    if ghn is None and dataset is None:
        raise ValueError(
            "initialize() needs a GHN: pass dataset='cifar10-mini' (shipped), 'imagenet' or 'cifar10' "
            "(downloaded), or ghn=<GHN2 | path | repo id>"
        )
    source = ghn if ghn is not None else dataset
    return load_ghn(source), str(source)
