"""GHN-2 as an ``nn.Module``: graph in, predicted parameter tensors out.

State-dict compatible with the published checkpoints (``embed``, ``shape_enc``, ``gnn``, ``ln``,
``decoder``, ``decoder_1d``, ``bias_class``) and savable to / loadable from the Hugging Face Hub
through ``PyTorchModelHubMixin`` (``config.json`` + ``model.safetensors``). The GHN never touches
a model's parameters: it returns tensors keyed by parameter name, already tiled to the target
shapes and normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin

from ..graph.build import Graph
from ..graph.primitives import NORM_PRIMITIVES, PRIMITIVES
from ..write.tensors import crop, weight_scale
from .base import GHNBase
from .decoder import ConvDecoder
from .gnn import MLP, GatedGNN, SweepPlan
from .shape_encoder import ShapeEncoder


class GHN2(
    GHNBase,
    PyTorchModelHubMixin,
    library_name="ghninit",
    tags=["graph-hypernetwork", "parameter-prediction", "ghn2"],
    repo_url="https://github.com/ghninit/ghninit",
    license="mit",
):
    """Graph HyperNetwork of "Parameter Prediction for Unseen Deep Architectures" (NeurIPS 2021).

    Args:
        max_shape: largest predicted tensor ``(out, in, S, S)``: (64, 64, 16, 16) for ImageNet,
            (64, 64, 11, 11) for CIFAR-10.
        num_classes: classes of the data set the GHN was trained on.
        hypernet: ``"gatedgnn"`` (GHN-1/2) or ``"mlp"`` (no message passing).
        decoder: only ``"conv"`` is supported.
        weight_norm: normalise predicted tensors (GHN-2).
        ve: use virtual edges (GHN-2).
        layernorm: LayerNorm on node states after message passing (GHN-2).
        hid: node state size.
    """

    def __init__(
        self,
        max_shape: Sequence[int] = (64, 64, 16, 16),
        num_classes: int = 1000,
        hypernet: str = "gatedgnn",
        decoder: str = "conv",
        weight_norm: bool = True,
        ve: bool = True,
        layernorm: bool = True,
        hid: int = 32,
    ):
        super().__init__()
        if decoder != "conv":
            raise NotImplementedError(f"decoder={decoder!r}: only the 'conv' decoder of GHN-2 is implemented")
        if hypernet not in ("gatedgnn", "mlp"):
            raise ValueError(f"hypernet={hypernet!r}: expected 'gatedgnn' or 'mlp'")
        self.max_shape = tuple(int(s) for s in max_shape)
        self.num_classes = num_classes
        self.hypernet, self.weight_norm, self.ve, self.layernorm = hypernet, weight_norm, ve, layernorm
        self.embed = nn.Embedding(len(PRIMITIVES), hid)
        self.shape_enc = ShapeEncoder(hid, num_classes, self.max_shape)
        self.gnn = GatedGNN(hid, ve) if hypernet == "gatedgnn" else MLP(hid, (hid, hid))
        if layernorm:
            self.ln = nn.LayerNorm(hid)
        self.decoder = ConvDecoder(hid, (hid * 4, hid * 8), self.max_shape, num_classes)
        max_ch = max(self.max_shape[:2])
        self.decoder_1d = MLP(hid, (hid * 2, 2 * max_ch), last_activation=False)
        self.bias_class = nn.Sequential(nn.ReLU(), nn.Linear(max_ch, num_classes))

    @property
    def config(self) -> dict:
        """The constructor arguments, as stored with the weights."""
        return {
            "max_shape": list(self.max_shape),
            "num_classes": self.num_classes,
            "hypernet": self.hypernet,
            "decoder": "conv",
            "weight_norm": self.weight_norm,
            "ve": self.ve,
            "layernorm": self.layernorm,
            "hid": self.embed.embedding_dim,
        }

    def node_states(self, graph: Graph, predict_classifier: bool = True) -> torch.Tensor:
        """``(N, hid)`` node states after message passing (and LayerNorm)."""
        shapes = [node.shape for node in graph.nodes]
        if not predict_classifier:  # encode the classifier as if it had the GHN's own classes
            for i in graph.classifier:
                if i is not None:
                    shapes[i] = (self.num_classes, *shapes[i][1:])
        x = self.embed(graph.primitive_ids.to(self.device)) + self.shape_enc(shapes)
        if isinstance(self.gnn, GatedGNN):
            x = self.gnn(x, self._plans(graph))
        else:
            x = self.gnn(x)
        return self.ln(x) if self.layernorm else x

    # -- internals ---------------------------------------------------------------------------

    def _plans(self, graph: Graph) -> tuple[SweepPlan, SweepPlan]:
        cache = graph.__dict__.setdefault("_sweep_plans", {})
        ve = self.gnn.ve
        key = (str(self.device), ve)  # a graph may be predicted by GHNs with and without virtual edges
        if key not in cache:
            n = len(graph.nodes)
            cache[key] = (
                SweepPlan(n, graph.edges, graph.depth_levels(), False, self.device, ve),
                SweepPlan(n, graph.edges, graph.depth_levels(reverse=True), True, self.device, ve),
            )
        return cache[key]

    def decoder_groups(self, graph: Graph, predict_classifier: bool = True) -> dict[object, list[int]]:
        """Node indices per decoder call: ``"1d"``, ``"cls_w"``, ``"cls_b"`` or ``(kh, kw, out, in)``, in node order."""
        cls_w, cls_b = graph.classifier
        size = self.max_shape[2:]
        groups: dict[object, list[int]] = {}
        for i, node in enumerate(graph.nodes):
            if node.param is None or node.param in graph.uncovered:
                continue
            if i in (cls_w, cls_b):
                if not predict_classifier:
                    continue
                key = "cls_w" if i == cls_w else "cls_b"
            elif len(node.shape) == 1:
                key = "1d"
            elif len(node.shape) in (2, 4):
                kernel = node.shape[2:] if len(node.shape) == 4 else (1, 1)
                channels = [min(c, m) for c, m in zip(node.shape[:2], self.max_shape[:2])]
                key = (min(kernel[0], size[0]), min(kernel[1], size[1]), *channels)
            else:
                continue
            groups.setdefault(key, []).append(i)
        return groups

    def _decode(self, key: object, x: torch.Tensor) -> torch.Tensor:
        if key == "cls_w":
            return self.decoder(x, class_pred=True)
        if isinstance(key, tuple):  # (kh, kw, out, in)
            return self.decoder(x, key[:2], channels=key[2:])
        w = self.decoder_1d(x).view(len(x), 2, -1)
        return self.bias_class(w) if key == "cls_b" else w

    @staticmethod
    def _normalize_group(key: object, decoded: torch.Tensor, nodes: list) -> torch.Tensor:
        """Normalise a group's decoded tensors at once (element-wise, so before cropping and tiling)."""
        if key in ("1d", "cls_b"):  # row 0: norm weights, row 1: biases
            return torch.stack([2 * torch.sigmoid(0.5 * decoded[:, 0]), torch.tanh(0.2 * decoded[:, 1])], 1)
        scales = [1.0 if node.primitive == "pos_enc" else weight_scale(node.shape) for node in nodes]
        scales = torch.tensor(scales, dtype=decoded.dtype, device=decoded.device)
        return decoded * scales.view(-1, *[1] * (decoded.dim() - 1))

    def _emit_group(self, key: object, decoded: torch.Tensor, nodes: list, out: dict) -> None:
        if self.weight_norm:
            decoded = self._normalize_group(key, decoded, nodes)
        for node, w in zip(nodes, decoded):
            self._emit(node, w, key, out)

    def _emit(self, node, w: torch.Tensor, key: object, out: dict) -> None:
        if node.primitive in NORM_PRIMITIVES:
            out[node.param] = crop(w[0], node.shape), node.shape
            if node.bias is not None:
                out[node.bias] = crop(w[1], node.shape), node.shape
        elif key in ("1d", "cls_b"):
            out[node.param] = crop(w[1], node.shape), node.shape
        else:
            if key == "cls_w" and len(node.shape) == 4:  # a 1x1-conv classifier: (classes, 64) -> (classes, 64, 1, 1)
                w = w[:, :, None, None]
            out[node.param] = crop(w, node.shape), node.shape
