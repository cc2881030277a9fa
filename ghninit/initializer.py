"""``initialize``: predict a model's parameters with a GHN and write them in place."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import torch
import torch.nn as nn

from .ghn import GHN2, GHN3
from .graph import GHN2_RULES, build_graph
from .hub import load_ghn
from .postprocess import Orthogonalize, plan, resolve_postprocess
from .report import Report
from .write import prepare, reset_batchnorm_statistics, write


def initialize(
    model: nn.Module,
    dataset: str | None = None,
    *,
    ghn: GHN2 | GHN3 | str | os.PathLike | None = None,
    keep_classifier: bool | None = None,
    leaf_modules: Iterable[type] = (),
    postprocess: bool | str | Orthogonalize | None = None,
) -> Report:
    """Initialise ``model`` in place with parameters predicted by GHN-2.

    Args:
        model: any ``nn.Module`` torch.fx can trace (see ``leaf_modules``).
        dataset: name of a GHN, used when ``ghn`` is None: ``"cifar10-mini"`` (shipped, no
            network) or a published one (``"imagenet"``, ``"cifar10"``, from the Hugging Face Hub).
        ghn: a loaded :class:`GHN2` or :class:`GHN3`, or anything :func:`ghninit.load_ghn` accepts
            (e.g. "ghn3-t", a published GHN-3 file, a folder).
        keep_classifier: ``None`` (default) predicts the classifier only when its output size
            equals the GHN's number of classes; ``True`` always keeps the model's own classifier;
            ``False`` always predicts it (tiled to the model's classes).
        leaf_modules: module types not to trace into (their parameters keep their init).
        postprocess: post-process the predicted conv/linear weights before writing them (see
            :mod:`ghninit.postprocess`): ``None`` (default, none), ``True`` or ``"orth"`` (the recipe
            of Knyazev, arXiv 2207.10049: orthogonalise every predicted conv/linear weight but the
            classifier; use it before fine-tuning), ``"orth-he"`` (the same with He's norms) or an
            :class:`Orthogonalize`.

    Returns:
        a :class:`Report`; ``print(report)`` summarises it.

    The model's train/eval mode and BatchNorm settings are kept; BatchNorm running statistics
    are reset. If anything fails, no parameter is changed.
    """
    start = time.perf_counter()
    post = resolve_postprocess(postprocess)
    ghn, source = _resolve_ghn(ghn, dataset)
    graph = build_graph(
        model, leaf_modules, virtual_edge_cutoff=50 if ghn.ve else 1, rules=getattr(ghn, "graph_rules", GHN2_RULES)
    )
    t_graph = time.perf_counter()
    if keep_classifier is None:
        predict_classifier = ghn.classifier_matches(graph)
    else:
        predict_classifier = not keep_classifier
    with torch.inference_mode(False), torch.no_grad():
        blocks = {name: block for name, (block, _) in ghn.predict_blocks(graph, predict_classifier).items()}
        t_predict = time.perf_counter()
        ready = prepare(model, blocks)
        if post is not None:
            classifier = [graph.nodes[i].param for i in graph.classifier if i is not None]
            post_done = plan(model, post, values=ready, only=ready, classifier=classifier[:1] or None)
            ready.update(post_done)
        write(model, ready)
        reset_batchnorm_statistics(model)
    end = time.perf_counter()

    skipped = dict(graph.uncovered)
    if not predict_classifier:
        for i in graph.classifier:
            if i is not None:
                skipped[graph.nodes[i].param] = (
                    "classifier kept (keep_classifier or class count differs from the GHN's)"
                )
    for name, _ in model.named_parameters():
        if name not in ready and name not in skipped:
            skipped[name] = "not predicted by this GHN"
    params = dict(model.named_parameters())
    return Report(
        model=type(model).__name__,
        ghn=source,
        predicted=list(ready),
        n_params_predicted=sum(params[n].numel() for n in ready),
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
    )


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
