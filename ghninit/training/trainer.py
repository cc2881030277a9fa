"""Meta-batched GHN training on DeepNets-1M (Eq. 2 of "Parameter Prediction for Unseen Deep Architectures").

Each step takes one batch of images and ``meta_batch`` architectures of the TRAIN split, predicts
all their parameters with the GHN, runs every network on the images with
:func:`torch.func.functional_call` (the networks own no parameters of their own: they are built
on the ``meta`` device), averages the cross-entropies and backpropagates into the GHN. A
meta-batch whose loss or gradient is not finite is skipped and logged.

Speed comes from two exact rewrites of the GHN's forward (checked against ``GHN2.forward`` in
the tests): the graphs of a meta-batch are joined into one disjoint graph, so message passing
runs once over depth levels shared by all of them; and the decoder computes only the channels a
target tensor reads (a 16-channel layer reads 16 x 16 of the 64 x 64 predicted block), which
cuts the decoder's last 1x1 convolution, the largest cost, by up to 16x.

Everything random in a step is a pure function of ``(seed, step)``: the architectures, the image
batch and its augmentation (see :mod:`ghninit.training.data`), and dropout (the torch generator is
reseeded per network). A run resumed from a checkpoint therefore takes exactly the steps an
uninterrupted run would have taken.

Data-parallel training uses :class:`torch.nn.parallel.DistributedDataParallel` (gloo on CPU,
nccl on GPU): every process sees the same images and takes its share of the meta-batch; averaged
gradients equal those of one process running the whole meta-batch.
"""

from __future__ import annotations

import math
import random
import signal
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..deepnets import ArchSpec, generate
from ..ghn import GHN2, GHN3, GHNBase
from ..ghn.presets import DATASET_SHAPES, HID
from ..graph.build import GHN2_RULES, GHN3_RULES, Graph, build_graph
from ..graph.primitives import NORM_PRIMITIVES
from ..write.tensors import crop, normalize, tile

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in checkpoints).

    GHN architecture: ``hypernet``, ``ve`` (virtual edges), ``weight_norm``, ``layernorm``,
    ``hid``, ``max_shape``/``num_classes`` (published CIFAR-10 GHN-2: (64, 64, 11, 11), 10).
    GHN-1 is ``ve=False, weight_norm=False, layernorm=False, meta_batch=1``; the MLP baseline
    is ``hypernet="mlp"``; GHN-3 is ``hypernet="graphormer"`` with ``layers`` and ``heads``
    (presets in :data:`ghninit.ghn.presets.PRESETS`).

    ``norm_reg`` is the weight of GHN-3's regulariser on predicted parameters: each network's
    loss gets ``norm_reg`` times the sum of the Frobenius norms of its predicted tensors (the
    reference ``ghn3/trainer.py`` adds ``predparam_wd * sum ||p||_F`` per network before averaging
    over the meta-batch; ``train_ghn_ddp.py`` uses 3e-5 for GHN-3, 0 for GHN-2).
    ``optimizer`` is ``"adam"`` (GHN-2) or ``"adamw"`` (GHN-3).
    """

    dataset: str = "cifar10"
    num_classes: int = 10
    image_size: int = 32
    max_shape: tuple[int, int, int, int] = (64, 64, 11, 11)
    hypernet: str = "gatedgnn"
    ve: bool = True
    weight_norm: bool = True
    layernorm: bool = True
    hid: int = HID
    split: str = "train"
    num_nets: int = 10**6
    meta_batch: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    epochs: float = 300
    lr_steps: tuple[float, ...] = (200, 250)
    gamma: float = 0.1
    schedule: str = "step"
    warmup_steps: int = 0
    grad_clip: float = 5.0
    adam_eps: float = 1e-8
    max_nodes: int = 2200
    seed: int = 0
    channels_last: bool = True
    fast_predict: bool = True
    layers: int = 3
    heads: int = 8
    optimizer: str = "adam"
    norm_reg: float = 0.0

    @property
    def is_ghn3(self) -> bool:
        return self.hypernet == "graphormer"

    @property
    def graph_rules(self):
        """The graph rules of the GHN this config trains."""
        return GHN3_RULES if self.is_ghn3 else GHN2_RULES

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> TrainConfig:
        """Paper defaults for ``"cifar10"`` or ``"imagenet"`` (batch 256, S = 16, 1000 classes)."""
        base = dict(dataset=dataset)
        if dataset == "imagenet":
            base.update(DATASET_SHAPES["imagenet"], batch_size=256)
        return cls(**{**base, **overrides})

    def ghn_kwargs(self) -> dict:
        """Constructor arguments of :class:`~ghninit.GHN2` (or :class:`~ghninit.GHN3` for ``hypernet="graphormer"``)."""
        if self.is_ghn3:
            return dict(
                max_shape=tuple(self.max_shape),
                num_classes=self.num_classes,
                hid=self.hid,
                layers=self.layers,
                heads=self.heads,
                weight_norm=self.weight_norm,
                ve=self.ve,
                layernorm=self.layernorm,
                hypernet="graphormer",
            )
        return dict(
            max_shape=tuple(self.max_shape),
            num_classes=self.num_classes,
            hypernet=self.hypernet,
            decoder="conv",
            weight_norm=self.weight_norm,
            ve=self.ve,
            layernorm=self.layernorm,
            hid=self.hid,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        for key in ("max_shape", "lr_steps"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def make_ghn(config: TrainConfig, seed: int | None = None) -> GHNBase:
    """A freshly initialised GHN for ``config`` (seeded with ``config.seed`` unless given)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if seed is None else seed)
        return (GHN3 if config.is_ghn3 else GHN2)(**config.ghn_kwargs())


# ---------------------------------------------------------------------------------------------
# Batched, channel-restricted prediction


def union_graph(graphs: Sequence[Graph]) -> Graph:
    """The disjoint union of ``graphs`` (nodes concatenated in order, edges offset)."""
    nodes, edges, offset = [], [], 0
    for g in graphs:
        nodes.extend(g.nodes)
        e = g.edges.copy()
        e[:, :2] += offset
        edges.append(e)
        offset += len(g.nodes)
    return Graph(nodes, np.concatenate(edges) if edges else np.zeros((0, 3), dtype=np.int64), {})


def _decode_conv(ghn: GHN2, x: torch.Tensor, h: int, w: int, n_out: int, n_in: int) -> torch.Tensor:
    """``ghn.decoder(x, (h, w))[:, :n_out, :n_in]`` computing only those output channels: ``(N, n_out, n_in, h, w)``."""
    dec = ghn.decoder
    out0, out1, s0, s1 = dec.out_shape
    hid0 = dec.hid[0]
    fc, conv1, conv2 = dec.fc[0], dec.conv[0], dec.conv[2]
    dev = x.device
    rows = (
        torch.arange(hid0, device=dev)[:, None, None] * (s0 * s1)
        + torch.arange(h, device=dev)[None, :, None] * s1
        + torch.arange(w, device=dev)[None, None, :]
    ).reshape(-1)
    y = F.relu(F.linear(x, fc.weight[rows], fc.bias[rows])).view(len(x), hid0, h, w)
    y = F.relu(conv1(y))
    sel = (torch.arange(n_out, device=dev)[:, None] * out1 + torch.arange(n_in, device=dev)[None, :]).reshape(-1)
    w2 = conv2.weight.view(conv2.out_channels, -1)[sel]
    z = torch.einsum("nchw,rc->nrhw", y, w2) + conv2.bias[sel][None, :, None, None]
    return z.view(len(x), n_out, n_in, h, w)


def _decode_classifier(ghn: GHN2, x: torch.Tensor, n_in: int) -> torch.Tensor:
    """``ghn.decoder(x, class_pred=True)[:, :, :n_in]``: ``(N, num_classes, n_in)``."""
    z = _decode_conv(ghn, x, 1, 1, ghn.decoder.out_shape[0], n_in)  # (N, 64, n_in, 1, 1)
    return ghn.decoder.class_layer_predictor(z[:, :, :, :, 0])[:, :, :, 0]


def predict_params(ghn: GHN2, graphs: Sequence[Graph]) -> list[dict[str, torch.Tensor]]:
    """``[ghn(g) for g in graphs]`` (classifiers predicted), computed in one pass; differentiable.

    Message passing runs once on the union of the graphs; each decoder group computes only the
    output and input channels its target tensors read.
    """
    if not graphs:
        return []
    union = union_graph(graphs) if len(graphs) > 1 else graphs[0]
    states = ghn.node_states(union, predict_classifier=True)
    max_out, max_in, s0, s1 = ghn.max_shape
    # (graph, node) of every predicted tensor, grouped by what the decoder must compute.
    groups: dict[tuple, list[tuple[int, int, int]]] = {}
    offset = 0
    for gi, g in enumerate(graphs):
        cls_w, cls_b = g.classifier
        for i, node in enumerate(g.nodes):
            if node.param is None or node.param in g.uncovered:
                continue
            shape = node.shape
            if i == cls_w:
                key: tuple = ("cls_w", min(shape[1], max_in))
            elif i == cls_b:
                key = ("cls_b",)
            elif len(shape) == 1:
                key = ("1d",)
            elif len(shape) == 2:
                key = ("conv", 1, 1, min(shape[0], max_out), min(shape[1], max_in))
            elif len(shape) == 4:
                key = ("conv", min(shape[2], s0), min(shape[3], s1), min(shape[0], max_out), min(shape[1], max_in))
            else:
                continue
            groups.setdefault(key, []).append((gi, i, offset + i))
        offset += len(g.nodes)

    out: list[dict[str, torch.Tensor]] = [{} for _ in graphs]

    def finish(gi: int, name: str, tensor: torch.Tensor, shape: tuple[int, ...], kind: str) -> None:
        block = crop(tensor, shape)
        if ghn.weight_norm:
            block = normalize(block, kind, shape)
        out[gi][name] = tile(block, shape)

    for key, members in groups.items():
        x = states[torch.tensor([m[2] for m in members], device=states.device)]
        if key[0] == "conv":
            decoded = _decode_conv(ghn, x, *key[1:])
        elif key[0] == "cls_w":
            decoded = _decode_classifier(ghn, x, key[1])
        else:
            decoded = ghn.decoder_1d(x).view(len(x), 2, -1)
            if key[0] == "cls_b":
                decoded = ghn.bias_class(decoded)
        for j, (gi, i, _) in enumerate(members):
            node = graphs[gi].nodes[i]
            w = decoded[j]
            if key[0] in ("1d", "cls_b"):
                if node.primitive in NORM_PRIMITIVES:
                    finish(gi, node.param, w[0], node.shape, "norm")
                    if node.bias is not None:
                        finish(gi, node.bias, w[1], node.shape, "bias")
                else:
                    finish(gi, node.param, w[1], node.shape, "bias")
            else:
                kind = "pos_enc" if node.primitive == "pos_enc" else "weight"
                finish(gi, node.param, w, node.shape, kind)
    return out


def predicted_norm(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the Frobenius norms of one network's predicted tensors (GHN-3's regulariser, before its weight)."""
    return torch.stack([p.norm() for p in params.values()]).sum()


class MetaBatchPredictor(nn.Module):
    """The module data-parallel training wraps: graphs in, predicted parameters out.

    The batched, channel-restricted path (:func:`predict_params`) is GHN-2's; a GHN-3 (whose
    attention would mix the graphs of a disjoint union) predicts one graph at a time.
    """

    def __init__(self, ghn: GHNBase, fast: bool = True):
        super().__init__()
        self.ghn = ghn
        self.fast = fast and isinstance(ghn, GHN2)

    def forward(self, graphs: Sequence[Graph]) -> list[dict[str, torch.Tensor]]:
        if self.fast:
            return predict_params(self.ghn, graphs)
        return [self.ghn(g) for g in graphs]  # one graph at a time, all 64x64 channels (for comparison)


# ---------------------------------------------------------------------------------------------
# Architectures of a step


def meta_batch_indices(seed: int, step: int, attempt: int, meta_batch: int, num_nets: int) -> list[int]:
    """Architecture indices of a step's meta-batch (attempt > 0 after an over-size draw)."""
    rng = np.random.default_rng([seed, 7, step, attempt])
    return [int(i) for i in rng.integers(0, num_nets, size=meta_batch)]


@dataclass
class Architecture:
    """One sampled network: its spec, a parameter-free (meta) instance, and its graph."""

    spec: ArchSpec
    net: nn.Module
    graph: Graph
    fallback: dict[str, torch.Tensor] = field(default_factory=dict)


def prepare_architecture(spec: ArchSpec, config: TrainConfig) -> Architecture:
    """Build the network on the ``meta`` device (no memory, no init) and its graph."""
    net = spec.build(config.num_classes, config.image_size, device="meta")
    graph = build_graph(net, virtual_edge_cutoff=50 if config.ve else 1, rules=config.graph_rules)
    fallback = {}
    if graph.uncovered:  # parameters the GHN does not predict keep a real initialisation
        with torch.random.fork_rng(devices=[]):  # a pure function of the spec, whatever process builds it
            torch.manual_seed(_seed_for(config.seed, 13, spec.index))
            real = dict(spec.build(config.num_classes, config.image_size).named_parameters())
        fallback = {name: real[name].detach() for name in graph.uncovered}
    return Architecture(spec, net, graph, fallback)


def sample_meta_batch(
    config: TrainConfig, step: int, rank: int = 0, world_size: int = 1
) -> tuple[list[int], list[Architecture]]:
    """Process ``rank``'s share of step ``step``'s meta-batch: ``(indices, architectures)``.

    The meta-batch is redrawn (next ``attempt``) while its graphs have more than
    ``config.max_nodes`` nodes in total. Every process builds the graphs of the whole meta-batch
    to decide, so the choice needs no communication and is a pure function of
    ``(config, step)``, whatever the number of processes; only this process's share gets its
    virtual edges and the real-tensor fallbacks it needs to run.
    """
    c = config
    share = c.meta_batch // world_size
    lo = rank * share
    for attempt in range(100):
        indices = meta_batch_indices(c.seed, step, attempt, c.meta_batch, c.num_nets)
        specs = [generate(c.split, i) for i in indices]
        mine = [prepare_architecture(spec, c) for spec in specs[lo : lo + share]]
        nodes = sum(len(a.graph) for a in mine)
        if c.max_nodes > 0:
            others = specs[:lo] + specs[lo + share :]
            nodes += sum(_node_count(spec, c) for spec in others)
        if c.max_nodes <= 0 or nodes <= c.max_nodes:
            break
    return indices[lo : lo + share], mine


def _node_count(spec: ArchSpec, config: TrainConfig) -> int:
    """Nodes of the architecture's graph (virtual edges, which do not change it, are skipped: 3x faster)."""
    net = spec.build(config.num_classes, config.image_size, device="meta")
    return len(build_graph(net, virtual_edge_cutoff=1, rules=config.graph_rules))


class _StepArchitectures(torch.utils.data.Dataset):
    """Item ``i``: ``(step, indices, architectures)`` of step ``start + i`` for one process."""

    def __init__(self, config: TrainConfig, start: int, stop: int, rank: int, world_size: int):
        self.config, self.start, self.stop = config, start, stop
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> tuple[int, list[int], list[Architecture]]:
        step = self.start + i
        indices, archs = sample_meta_batch(self.config, step, self.rank, self.world_size)
        return step, indices, archs


def _init_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)
    # The training process handles termination (it checkpoints, then stops its workers); a worker
    # killed first would make it fail before the checkpoint is written.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ArchitecturePrefetcher:
    """The architectures of steps ``start, start + 1, ...``, built ahead by worker processes.

    A :class:`torch.utils.data.DataLoader` over step indices: ``workers`` processes sample the
    architectures, build the parameter-free networks and their graphs (and the fallbacks of
    uncovered parameters) up to ``ahead`` steps per worker before the training loop needs them,
    so the step itself only predicts, runs the networks and updates. Items come in step order
    and are exactly what :meth:`Trainer.sample_architectures` returns, so a prefetched run takes
    the same steps as an inline one and resumes the same way. ``workers=0`` builds inline.
    """

    def __init__(
        self,
        config: TrainConfig,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 1,
        ahead: int = 2,
    ):
        data = _StepArchitectures(config, start, stop, rank, world_size)
        extra = dict(prefetch_factor=ahead, worker_init_fn=_init_worker) if workers > 0 else {}
        self.loader = torch.utils.data.DataLoader(
            data, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_keep, **extra
        )

    def __iter__(self):
        return iter(self.loader)


def _keep(item):
    return item


# ---------------------------------------------------------------------------------------------
# Trainer


@dataclass
class StepResult:
    """What one training step did."""

    step: int
    loss: float
    skipped: bool
    seconds: dict[str, float]  # wall time per phase
    arch_indices: list[int]
    n_nodes: int
    top1: float = float("nan")
    reason: str = ""
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # CPU time of this process per phase
    norm_reg: float = 0.0  # the regulariser's term of the loss (mean over the meta-batch), 0 when off


PHASES = ("graphs", "ghn_forward", "nets_forward_backward", "ghn_backward", "optimizer")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _phases(*marks_and_index) -> dict[str, float]:
    *marks, k = marks_and_index
    out = {name: marks[i + 1][k] - marks[i][k] for i, name in enumerate(PHASES)}
    out["total"] = marks[-1][k] - marks[0][k]
    return out


def _seed_for(*keys: int) -> int:
    return int(np.random.default_rng([int(k) for k in keys]).integers(0, 2**62))


class Trainer:
    """GHN training state and one ``step`` of Eq. 2.

    Args:
        config: the run's configuration.
        ghn: the GHN to train (default: a fresh one from ``config``).
        device: where the GHN and the networks run.
        distributed: wrap the GHN in DistributedDataParallel (the process group must exist).
        steps_per_epoch: batches per epoch (for the step-decay schedule, in epochs).
    """

    def __init__(
        self,
        config: TrainConfig,
        ghn: GHNBase | None = None,
        device: str | torch.device = "cpu",
        distributed: bool = False,
        steps_per_epoch: int = 781,
    ):
        self.config = config
        self.device = torch.device(device)
        self.ghn = (ghn if ghn is not None else make_ghn(config)).to(self.device).train()
        self.distributed = distributed and dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        if config.meta_batch % self.world_size:
            raise ValueError(f"meta-batch {config.meta_batch} must be a multiple of the {self.world_size} processes")
        predictor = MetaBatchPredictor(self.ghn, config.fast_predict)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            predictor = DistributedDataParallel(
                predictor,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self.predictor = predictor
        if config.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer={config.optimizer!r}: expected 'adam' or 'adamw'")
        optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer(
            self.ghn.parameters(), lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps
        )
        self.steps_per_epoch = steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step = 0
        self.skipped: list[tuple[int, str]] = []

    @property
    def total_steps(self) -> int:
        return int(math.ceil(self.config.epochs * self.steps_per_epoch))

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at ``step``: linear warm-up, then step decay or cosine to zero."""
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "cosine":
            span = max(1, self.total_steps - c.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - c.warmup_steps) / span)))
        milestones = [max(1, int(round(e * self.steps_per_epoch))) for e in c.lr_steps]
        return c.gamma ** sum(step >= m for m in milestones)

    # -- one step --------------------------------------------------------------------------

    def sample_architectures(self, step: int) -> tuple[list[int], list[Architecture]]:
        """This process's share of the step's meta-batch (see :func:`sample_meta_batch`)."""
        return sample_meta_batch(self.config, step, self.rank, self.world_size)

    def train_step(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        prepared: tuple[list[int], list[Architecture]] | None = None,
    ) -> StepResult:
        """One optimiser step on this batch of images and the step's architectures.

        ``prepared`` is the step's ``(indices, architectures)`` built ahead of time (by an
        :class:`ArchitecturePrefetcher`); without it they are built here, on the critical path.
        """
        c = self.config
        step = self.step
        t0 = _clock()
        indices, archs = prepared if prepared is not None else self.sample_architectures(step)
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if c.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        t1 = _clock()

        self.optimizer.zero_grad(set_to_none=True)
        predicted = self.predictor([a.graph for a in archs])
        t2 = _clock()

        share = c.meta_batch // self.world_size
        losses, regs, correct = [], [], 0
        leaves = [t for p in predicted for t in p.values()]
        for j, (arch, params) in enumerate(zip(archs, predicted)):
            torch.manual_seed(_seed_for(c.seed, 11, step, self.rank * share + j))  # dropout
            if c.norm_reg > 0:
                regs.append(c.norm_reg * predicted_norm(params))
            params = {**arch.fallback, **params}
            logits = functional_call(arch.net, params, (images,))
            losses.append(F.cross_entropy(logits, targets))
            correct += (logits.argmax(1) == targets).sum().item()
        # Mean over the global meta-batch: DDP averages gradients over processes.
        loss = torch.stack(losses).mean()
        reg = torch.stack(regs).mean() if regs else torch.zeros((), device=self.device)
        total = loss + reg
        finite = bool(torch.isfinite(total))
        if finite:
            grads = torch.autograd.grad(total, leaves, allow_unused=True)
        t3 = _clock()
        if finite:
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
            torch.autograd.backward(leaves, grads)
        else:  # keep processes in lock-step: contribute zero gradients, the step is skipped below
            torch.autograd.backward(leaves, [torch.zeros_like(t) for t in leaves])
        t4 = _clock()

        flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
        if self.distributed:
            dist.all_reduce(flag)
        grad_norm = nn.utils.clip_grad_norm_(self.ghn.parameters(), c.grad_clip)
        reason = ""
        if flag.item() > 0:
            reason = "non-finite loss"
        elif not torch.isfinite(grad_norm):
            reason = "non-finite gradient"
        if reason:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped.append((step, reason))
        else:
            self.optimizer.step()
        with warnings.catch_warnings():  # a skipped first step makes the scheduler warn; the schedule is by step
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.step += 1
        stats = torch.tensor(
            [float(loss.detach()), float(correct), float(len(targets) * len(archs)), float(reg.detach())],
            device=self.device,
        )
        if self.distributed:
            dist.all_reduce(stats)
            stats[0] /= self.world_size
            stats[3] /= self.world_size
        t5 = _clock()
        return StepResult(
            step=step,
            loss=float(stats[0]),
            skipped=bool(reason),
            seconds=_phases(t0, t1, t2, t3, t4, t5, 0),
            cpu_seconds=_phases(t0, t1, t2, t3, t4, t5, 1),
            arch_indices=indices,
            n_nodes=sum(len(a.graph) for a in archs),
            top1=100.0 * float(stats[1] / stats[2]),
            reason=reason,
            norm_reg=float(stats[3]),
        )

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Model, optimiser, scheduler, RNG states, step and config."""
        return {
            "ghn": self.ghn.state_dict(),
            "ghn_config": self.ghn.config,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "config": self.config.to_dict(),
            "skipped": list(self.skipped),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state()[1].tolist(),
                "python": repr(random.getstate()),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.ghn.load_state_dict(state["ghn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.skipped = [tuple(s) for s in state.get("skipped", [])]
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])

    def save(self, path) -> None:
        """Write a checkpoint atomically (``path`` is replaced only once fully written)."""
        import os
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load(self, path) -> None:
        """Resume from a checkpoint written by :meth:`save`."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        saved = TrainConfig.from_dict(state["config"])
        if saved.ghn_kwargs() != self.config.ghn_kwargs():
            raise ValueError(f"checkpoint {path} is for a different GHN: {saved.ghn_kwargs()}")
        self.load_state_dict(state)
