"""``initialize``: predict a model's parameters with a GHN and write them in place."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import torch
import torch.nn as nn

from .ghn import GHN2, GHN3
from .graph.build import GHN2_RULES, build_graph
from .report import Report
from .write.assign import prepare, reset_batchnorm_statistics, write
from .write.meta import materialize, target_device
from .write.postprocess import Orthogonalize, plan, resolve_postprocess
from .write.wrapped import unwrap
from .zoo.hub import load_ghn


def initialize(
    model: nn.Module,
    dataset: str | None = None,
    *,
    ghn: GHN2 | GHN3 | str | os.PathLike | None = None,
    keep_classifier: bool | None = None,
    leaf_modules: Iterable[type] = (),
    postprocess: bool | str | Orthogonalize | None = None,
    device: str | torch.device | None = None,
    example_inputs: object = None,
) -> Report:
    """Initialise ``model`` in place with parameters predicted by GHN-2.

    Args:
        model: any ``nn.Module`` (traced by torch.fx, with an example input where needed; see
            ``example_inputs`` and ``leaf_modules``); a ``torch.compile``,
            ``DataParallel`` or ``DistributedDataParallel`` wrapper is looked through (the module
            inside is initialised; it owns the same parameters). Sharded models (FSDP) are refused:
            initialise before wrapping.
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
        example_inputs: trace the model by running it on these (a tuple of ``forward``'s positional
            arguments, a dict of its keyword arguments, or one tensor; on the model's device, which
            may be ``meta``) instead of symbolically. Without it, a model torch.fx cannot trace
            symbolically is run on an inferred example input (see ``docs/tracing.md``).

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
    materialize_on = target_device(module, device)
    post = resolve_postprocess(postprocess)
    ghn, source = _resolve_ghn(ghn, dataset)
    graph = build_graph(
        module,
        leaf_modules,
        virtual_edge_cutoff=50 if ghn.ve else 1,
        rules=getattr(ghn, "graph_rules", GHN2_RULES),
        example_inputs=example_inputs,
    )
    t_graph = time.perf_counter()
    if keep_classifier is None:
        predict_classifier = ghn.classifier_matches(graph)
    else:
        predict_classifier = not keep_classifier
    with torch.inference_mode(False), torch.no_grad():
        blocks = {name: block for name, (block, _) in ghn.predict_blocks(graph, predict_classifier).items()}
        t_predict = time.perf_counter()
        ready = prepare(module, blocks, materialize_on)
        if post is not None:
            classifier = [graph.nodes[i].param for i in graph.classifier if i is not None]
            post_done = plan(module, post, values=ready, only=ready, classifier=classifier[:1] or None)
            ready.update(post_done)
        materialized = materialize(module, materialize_on, ready) if materialize_on else {}
        if not materialize_on:
            write(module, ready)
        reset_batchnorm_statistics(module)
    end = time.perf_counter()

    skipped = dict(graph.uncovered)
    if not predict_classifier:
        for i in graph.classifier:
            if i is not None:
                skipped[graph.nodes[i].param] = (
                    "classifier kept (keep_classifier or class count differs from the GHN's)"
                )
    names = _names_by_tensor(module)
    predicted_ids = {id(names[n][0]) for n in ready}
    for name, p in module.named_parameters():
        if id(p) not in predicted_ids and name not in skipped:
            skipped[name] = "not predicted by this GHN"
    for name, how in materialized.items():
        skipped[name] = f"{skipped[name]}; {how}" if name in skipped else how
    params = dict(module.named_parameters())
    return Report(
        model=type(module).__name__,
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
            "write": end - t_predict,
            "total": end - start,
        },
        shared={n: [a for a in names[n][1] if a != n] for n in ready if len(names[n][1]) > 1},
        wrappers=wrappers,
        materialized_on=str(materialize_on) if materialize_on else None,
        tracing=graph.tracing,
    )


def _names_by_tensor(model: nn.Module) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Every parameter name -> (its tensor, all names of that tensor)."""
    groups: dict[int, list[str]] = {}
    tensors = dict(model.named_parameters(remove_duplicate=False))
    for name, p in tensors.items():
        groups.setdefault(id(p), []).append(name)
    return {name: (p, groups[id(p)]) for name, p in tensors.items()}


def _resolve_ghn(ghn: GHN2 | GHN3 | str | os.PathLike | None, dataset: str | None) -> tuple[GHN2 | GHN3, str]:
    if isinstance(ghn, GHN2 | GHN3):
        return ghn, getattr(ghn, "source", f"{type(ghn).__name__} instance")
    if ghn is None and dataset is None:
        raise ValueError(
            "initialize() needs a GHN: pass dataset='cifar10-mini' (shipped), 'imagenet' or 'cifar10' "
            "(downloaded), or ghn=<GHN2 | path | repo id>"
        )
    source = ghn if ghn is not None else dataset
    return load_ghn(source), str(source)
