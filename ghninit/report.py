"""What :func:`ghninit.initialize` did: tensors and parameters predicted, what was left and why, timings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LOW_COVERAGE = 0.5  # below this fraction of parameters predicted, initialize warns and the summary says so first
INFLATION_RULE = "2-D kernel predicted, repeated over the T time steps and divided by T (I3D inflation)"
COLLAPSE_RULE = "square (k, k) kernel predicted, its k rows summed into the 1-D kernel"
NOT_PREDICTED = "not predicted by this GHN"
TRAINING_DOCS = "docs/training-scripts.md#learning-rate-and-warmup-from-a-ghn-start"


def start_advice(n_params_predicted: int, postprocess: str | None) -> str | None:
    """One line on how to train from a GHN start, or ``None`` when nothing was predicted.

    What it says comes from ``benchmarks/recipes.py`` (``benchmarks/results/recipes``): from a GHN
    start, SGD at a from-scratch learning rate without warmup undid the start in its first steps,
    while one epoch of linear warmup kept it ahead; ``postprocess="orth"`` was the better start.
    """
    if n_params_predicted <= 0:
        return None
    orth = "" if postprocess else ' and pass postprocess="orth"'
    return (
        "train from this start with a linear learning-rate warmup of at least one epoch (timm train.py: "
        "--warmup-epochs 1 --sched-on-updates; torchvision: --lr-warmup-epochs 1 --lr-warmup-method linear)"
        f"{orth}; see {TRAINING_DOCS}"
    )


def every_name(
    skipped: Mapping[str, str], names: Mapping[str, list[str]], predicted: Iterable[str]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Account for every name of every parameter: ``(skipped, shared)`` for :class:`Report`.

    Args:
        skipped: parameter name -> why it kept its initialisation, under any of its names.
        names: every parameter name (tied names included) -> all names of its tensor, in the
            order of ``named_parameters(remove_duplicate=False)``.
        predicted: the names predictions were written under.

    Returns:
        ``skipped`` with every name of each tensor that was not predicted (a tensor without a
        reason: :data:`NOT_PREDICTED`), and ``shared``: for each tied tensor, the name it was
        predicted under (else its first name) -> its other names.
    """
    done = set(predicted)
    out = dict(skipped)
    shared: dict[str, list[str]] = {}
    seen: set[str] = set()
    for group in names.values():
        if group[0] in seen:
            continue
        seen.update(group)
        written = [n for n in group if n in done]
        if not written:
            why = next((skipped[n] for n in group if n in skipped), NOT_PREDICTED)
            for name in group:
                out.setdefault(name, why)
        if len(group) > 1:
            first = written[0] if written else group[0]
            shared[first] = [n for n in group if n != first]
    return out, shared


@dataclass
class Report:
    """Summary of one initialisation.

    Attributes:
        model: the model's class name.
        ghn: where the GHN came from (path, Hub repo or ``"GHN2 instance"``).
        predicted: names of the parameters written, in graph order.
        n_params_predicted: number of scalar parameters written.
        n_params_total: number of scalar parameters in the model.
        skipped: parameter name -> why it kept the model's own initialisation.
        classifier_predicted: whether the classification layer was predicted.
        n_nodes: nodes in the GHN graph.
        postprocess: the post-processing applied to the predicted weights, if any.
        postprocessed: names of the parameters it changed.
        seconds: wall time per stage (``graph``, ``predict``, ``postprocess`` when post-processing,
            ``write``: everything else after prediction) and ``total``, their sum.
        shared: for a tied parameter (one tensor under several names), the name it was predicted
            under (its first use in graph order), or for one kept as it was its first name -> its
            other names. Every name of a kept tied parameter is also in ``skipped``, with its reason.
        wrappers: wrappers that were looked through (``OptimizedModule``, ``DataParallel``...),
            outermost first; parameter names are those of the module inside.
        materialized_on: the device a meta-device model was allocated on, or ``None``.
        inflated: 3-D convolution weights predicted as their 2-D counterpart and inflated along
            time by :data:`INFLATION_RULE`.
        collapsed: 1-D convolution weights predicted as a square 2-D kernel and collapsed by
            :data:`COLLAPSE_RULE`.
        parametrized: parametrized weights (``torch.nn.utils.parametrize``) written through their
            parametrizations' ``right_inverse`` -> those parametrizations' class names.
        lazy: how lazy modules were materialised before prediction (the example input), or ``None``.
        n_outputs: how many of the model's outputs the graph joins (at a ``concat`` sink when more than one).
        skipped_families: the skipped parameters grouped by module type and reason, largest first:
            ``(module type, reason, number of scalar parameters)``.
        tracing: how the model's graph was traced: ``"symbolic"`` or ``"example input"``.
        advice: one line on how to train from this start (see :func:`start_advice`), or ``None``.
        sharded: for a sharded model (FSDP2, tensor parallel), parameter name -> (global shape,
            this rank's local shape, placements) of every tensor this rank wrote its shard of.
        rank: ``(rank, world size)`` of the process that wrote ``sharded``, else ``None``.
        inputs: the inputs the graph was traced with when ghninit inferred them (what was guessed), else ``None``.
    """

    model: str
    ghn: str
    predicted: list[str]
    n_params_predicted: int
    n_params_total: int
    skipped: dict[str, str] = field(default_factory=dict)
    classifier_predicted: bool = True
    n_nodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    postprocess: str | None = None
    postprocessed: list[str] = field(default_factory=list)
    shared: dict[str, list[str]] = field(default_factory=dict)
    wrappers: list[str] = field(default_factory=list)
    materialized_on: str | None = None
    inflated: list[str] = field(default_factory=list)
    collapsed: list[str] = field(default_factory=list)
    parametrized: dict[str, list[str]] = field(default_factory=dict)
    lazy: str | None = None
    n_outputs: int = 1
    skipped_families: list[tuple[str, str, int]] = field(default_factory=list)
    tracing: str = "symbolic"
    advice: str | None = None
    sharded: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = field(default_factory=dict)
    rank: tuple[int, int] | None = None
    inputs: str | None = None

    @property
    def n_tensors_predicted(self) -> int:
        return len(self.predicted)

    @property
    def fraction_predicted(self) -> float:
        return self.n_params_predicted / max(self.n_params_total, 1)

    @property
    def low_coverage(self) -> bool:
        """Whether less than :data:`LOW_COVERAGE` of the parameters were predicted."""
        return self.n_params_total > 0 and self.fraction_predicted < LOW_COVERAGE

    def coverage_warning(self, families: int = 3) -> str | None:
        """One line saying how little was predicted and the largest skipped families, when coverage is low."""
        if not self.low_coverage:
            return None
        parts = [f"{kind}{self._where(why)} ({n:,} parameters: {why})" for kind, why, n in self.skipped_families[:families]]
        largest = "; largest kept as they were: " + "; ".join(parts) if parts else ""
        return (
            f"only {100 * self.fraction_predicted:.1f}% of {self.model}'s {self.n_params_total:,} parameters "
            f"were predicted by the GHN; the rest keep their own initialisation{largest}"
        )

    def _where(self, why: str, shown: int = 2) -> str:
        """`` at <module paths>`` of the layers skipped as having no GHN rule, else ``""``."""
        if not why.startswith(("no GHN rule", "not described by the GHN rule")):
            return ""
        paths = list(dict.fromkeys(name.rpartition(".")[0] or "<root>" for name, w in self.skipped.items() if w == why))
        more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
        return f" at {', '.join(paths[:shown])}{more}"

    def __str__(self) -> str:
        warning = self.coverage_warning()
        lines = [f"ghninit: WARNING: {warning}"] if warning else []
        lines += [
            f"ghninit: {self.model} initialised by {self.ghn}",
            f"  predicted {self.n_tensors_predicted} tensors, {self.n_params_predicted:,} of "
            f"{self.n_params_total:,} parameters ({100 * self.fraction_predicted:.1f}%), graph of {self.n_nodes} nodes"
            + (f" joining {self.n_outputs} outputs" if self.n_outputs > 1 else ""),
            "  classifier: none, the outputs' heads are predicted as layers"
            if self.n_outputs > 1
            else f"  classifier: {'predicted' if self.classifier_predicted else 'kept as it was'}",
        ]
        if self.tracing != "symbolic":
            lines.append("  graph traced by running the model on an example input")
        if self.inputs:
            lines.append(f"  inputs inferred: {self.inputs}")
        if self.postprocess:
            lines.append(f"  post-processed {len(self.postprocessed)} weights: {self.postprocess}")
        if self.wrappers:
            lines.append(f"  inside {' > '.join(self.wrappers)}: the wrapped module was initialised")
        if self.sharded:
            local = sum(math.prod(shape) for _, shape, _ in self.sharded.values())
            where = f"rank {self.rank[0]} of {self.rank[1]}" if self.rank else "this rank"
            lines.append(
                f"  sharded: {where} wrote its local shards of {len(self.sharded)} tensors ({local:,} values; "
                "report.sharded has each global and local shape)"
            )
        if self.materialized_on:
            lines.append(f"  materialised from the meta device on {self.materialized_on}")
        if self.lazy:
            lines.append(f"  lazy modules materialised first: {self.lazy}")
        if self.inflated:
            lines.append(f"  3-D convolutions ({len(self.inflated)}): {INFLATION_RULE}")
        if self.collapsed:
            lines.append(f"  1-D convolutions ({len(self.collapsed)}): {COLLAPSE_RULE}")
        if self.parametrized:
            kinds = sorted({k for ks in self.parametrized.values() for k in ks})
            lines.append(
                f"  parametrized weights ({len(self.parametrized)}, {', '.join(kinds)}): written through right_inverse"
            )
        for name, others in self.shared.items():
            done = "kept" if name in self.skipped else "predicted once"
            lines.append(f"  tied: {name} {done}, shared with {', '.join(others)}")
        if self.skipped:
            lines.append(f"  kept their own initialisation ({len(self.skipped)}):")
            shown = list(self.skipped.items())
            for name, why in shown[:10]:
                lines.append(f"    {name}: {why}")
            if len(shown) > 10:
                lines.append(f"    ... and {len(shown) - 10} more (see report.skipped)")
        if self.seconds:
            stages = {k: v for k, v in self.seconds.items() if k != "postprocess"}
            lines.append("  time: " + ", ".join(f"{k} {v:.3f}s" for k, v in stages.items()))
            if "postprocess" in self.seconds:
                lines.append(f"  post-processing: {self.seconds['postprocess']:.3f}s (in total, not in write)")
        if self.advice:
            lines.append(f"  advice: {self.advice}")
        return "\n".join(lines)
