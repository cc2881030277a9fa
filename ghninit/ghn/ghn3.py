"""GHN-3 as an ``nn.Module``: a GHN-3 graph in, predicted parameter tensors out.

GHN-3 ("Can We Scale Transformers to Predict Parameters of Diverse ImageNet Models?", ICML 2023)
keeps GHN-2's primitive and shape embeddings, output normalisation and 1-D decoders, and replaces
the gated graph network with Graphormer layers (:mod:`.graphormer`) and the decoder with one
that reads centred windows (:mod:`.centred_decoder`). Graphs are built with
:data:`ghninit.graph.build.GHN3_RULES`. Tensors are grouped by the reference's shape key before
decoding (:func:`decoder_key`), so a group's tensors are decoded in one batch. State-dict
compatible with the published files (``SamsungSAILMontreal/ghn3``) and savable through
``PyTorchModelHubMixin`` (``config.json`` + ``model.safetensors``) like :class:`GHN2`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin

from ..graph.build import GHN3_RULES, Graph, Node
from ..graph.primitives import NORM_PRIMITIVES, PRIMITIVES
from ..write.tensors import weight_scale
from .base import GHNBase
from .centred_decoder import CentredDecoder
from .gnn import MLP
from .graphormer import Graphormer
from .shape_encoder import ShapeEncoder

CLASS_TOKEN_STD = 0.02


def adjacency_matrix(graph: Graph, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N, N)`` long matrix: 0 no edge, 1 real edge, d >= 2 virtual edge (shortest path d)."""
    n = len(graph.nodes)
    edges = torch.as_tensor(graph.edges, dtype=torch.long)
    adjacency = torch.zeros(n, n, dtype=torch.long)
    if len(edges):
        adjacency[edges[:, 0], edges[:, 1]] = edges[:, 2]
    return adjacency.to(device)


def _group_size(size: int, limit: int) -> int:
    """The reference's channel key: min(size, c), sizes divisible by 3 as 4/3 of that, >= c/2 as c."""
    n = min(size, limit)
    if n % 3 == 0:
        n = n // 3 * 4
    return limit if n >= limit / 2 else n


def decoder_key(node: Node, max_shape: Sequence[int], role: str | None = None) -> tuple[int, ...] | None:
    """The shape group a node is decoded in (GHN-3's reference key), or ``None`` if it is not decoded.

    Args:
        node: a parameter node.
        max_shape: the GHN's ``(c, c, S, S)``.
        role: ``"cls_w"`` / ``"cls_b"`` for the classifier's weight / bias, else ``None``.

    Returns:
        ``(out, in)`` for the classifier weight, ``(out, -1)`` for its bias, ``(out, 0)`` for
        other 1-D tensors, ``(out, in, kh, kw)`` for other weights (``(1, C, s, s)`` for a token
        positional embedding).
    """
    shape = node.shape
    if node.param is None or shape is None:
        return None
    size = [_group_size(s, m) for s, m in zip(shape, max_shape[:3])]
    if role == "cls_w":
        return (size[0], size[1])
    if len(shape) == 1:
        return (size[0], -1 if role == "cls_b" else 0)
    if node.param_shape is not None and len(node.param_shape) == 3:
        return tuple(shape)  # a token positional embedding, recorded as (1, C, s, s)
    if len(shape) == 2:
        return (size[0], size[1], 1, 1)
    if len(shape) == 4:
        return (size[0], size[1], shape[2], shape[3])
    return None


def _is_unscaled(shape: Sequence[int]) -> bool:
    """Positional encodings (by the reference's shape test) are written without fan-in scaling."""
    return len(shape) > 2 and shape[2] >= 11 and shape[0] == 1


class GHN3(
    GHNBase,
    PyTorchModelHubMixin,
    library_name="ghninit",
    tags=["graph-hypernetwork", "parameter-prediction", "ghn3"],
    repo_url="https://github.com/ghninit/ghninit",
    license="mit",
):
    """Graph HyperNetwork with Graphormer layers (GHN-3).

    Args:
        max_shape: largest predicted block ``(c, c, S, S)``, e.g. (64, 64, 16, 16) for GHN-3-T.
        num_classes: classes of the data set the GHN was trained on.
        hid: node state size.
        layers: number of Graphormer layers.
        heads: attention heads (the reference uses 16 when hid > 64, else 8).
        weight_norm: normalise predicted tensors as GHN-2 does.
        ve: use virtual edges (shortest paths up to 50).
        layernorm: LayerNorm on node states after the last layer.
        hypernet, decoder, is_ghn2: accepted for compatibility with the reference's config
            (which writes ``"gatedgnn"`` / ``"conv"`` for GHN-3 too); ``is_ghn2`` must be False.
    """

    graph_rules = GHN3_RULES

    def __init__(
        self,
        max_shape: Sequence[int] = (64, 64, 16, 16),
        num_classes: int = 1000,
        hid: int = 64,
        layers: int = 3,
        heads: int = 8,
        weight_norm: bool = True,
        ve: bool = True,
        layernorm: bool = True,
        hypernet: str = "graphormer",
        decoder: str = "conv",
        is_ghn2: bool = False,
    ):
        super().__init__()
        if is_ghn2:
            raise ValueError("is_ghn2=True: this config describes a GHN-2; load it as ghninit.GHN2")
        if layers < 1 or hid % heads or hid % 4:
            raise ValueError(f"GHN3: need layers >= 1 and hid ({hid}) divisible by heads ({heads}) and by 4")
        self.max_shape = tuple(int(s) for s in max_shape)
        self.num_classes = num_classes
        self.weight_norm, self.ve, self.layernorm = weight_norm, ve, layernorm
        self.heads = heads
        self.embed = nn.Embedding(len(PRIMITIVES), hid)
        self.shape_enc = ShapeEncoder(hid, num_classes, self.max_shape)
        self.gnn = Graphormer(hid, layers, heads)
        if layernorm:
            self.ln = nn.LayerNorm(hid)
        self.decoder = CentredDecoder(hid, (hid * 4, hid * 8), self.max_shape, num_classes)
        max_ch = max(self.max_shape[:2])
        self.decoder_1d = MLP(hid, (hid * 2, 2 * max_ch), last_activation=False)
        self.bias_class = nn.Sequential(nn.ReLU(), nn.Linear(max_ch, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # As the reference initialises a new GHN-3: small last decoder layers, truncated-normal embeddings.
        for layer in (self.decoder_1d.fc[-2], self.decoder.conv[-2], self.decoder.class_layer_predictor[-1]):
            layer.weight.data /= 5.0
            layer.bias.data.zero_()
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight.data, std=module.embedding_dim**-0.5)

    @property
    def config(self) -> dict:
        """The constructor arguments, as stored with the weights."""
        return {
            "max_shape": list(self.max_shape),
            "num_classes": self.num_classes,
            "hid": self.embed.embedding_dim,
            "layers": len(self.gnn),
            "heads": self.heads,
            "weight_norm": self.weight_norm,
            "ve": self.ve,
            "layernorm": self.layernorm,
            "hypernet": "graphormer",
        }

    def node_states(self, graph: Graph, predict_classifier: bool = True) -> torch.Tensor:
        """``(N, hid)`` node states after the Graphormer layers (and LayerNorm).

        The classifier is encoded with its own shape whether or not it is predicted, as in the
        reference GHN-3 (``predict_classifier`` is accepted for API compatibility with GHN2).
        """
        self._check_graph(graph)
        x = self.embed(graph.primitive_ids.to(self.device)) + self.shape_enc([n.shape for n in graph.nodes])
        x = self.gnn(x, adjacency_matrix(graph, self.device))
        return self.ln(x) if self.layernorm else x

    def decoder_groups(self, graph: Graph, predict_classifier: bool = True) -> dict[tuple[int, ...], list[int]]:
        """Node indices per :func:`decoder_key`, in node order."""
        cls_w, cls_b = graph.classifier
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, node in enumerate(graph.nodes):
            if node.param is None or node.param in graph.uncovered:
                continue
            role = "cls_w" if i == cls_w else "cls_b" if i == cls_b else None
            if role and not predict_classifier:
                continue
            key = decoder_key(node, self.max_shape, role)
            if key is not None:
                groups.setdefault(key, []).append(i)
        return groups

    # -- internals ---------------------------------------------------------------------------

    def _check_graph(self, graph: Graph) -> None:
        if graph.rules != self.graph_rules:  # equal, not identical: a graph may come pickled from a worker
            raise ValueError(
                f"GHN3 needs a graph built with GHN-3 rules, got '{graph.rules.name}' rules: "
                "use ghn.build_graph(model) or ghninit.build_graph(model, rules=ghninit.graph.build.GHN3_RULES)"
            )

    def _decode(self, key: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        c = self.max_shape[:2]
        if len(key) == 2 and key[1] > 0:
            return self.decoder(x, (1, 1), channels=(c[0], min(key[1], c[1])), class_pred=True)
        if len(key) == 2:
            w = self.decoder_1d(x).view(len(x), 2, -1)
            return self.bias_class(w) if key[1] < 0 else w
        return self.decoder(x, key[2:], channels=(min(key[0], c[0]), min(key[1], c[1])))

    def _emit_group(self, key: tuple[int, ...], decoded: torch.Tensor, nodes: list, out: dict) -> None:
        # A token positional embedding gets a class-token row drawn from N(0, 0.02) (torch's global
        # generator), as in the reference.
        for node, w in zip(nodes, decoded):
            self._emit(node, key, w, out)

    def _emit(self, node: Node, key: tuple[int, ...], w: torch.Tensor, out: dict) -> None:
        target = node.target_shape
        if len(key) == 2 and key[1] <= 0:  # 1-D: row 0 norm weights, row 1 biases
            if node.primitive in NORM_PRIMITIVES:
                out[node.param] = self._finish(w[0][: target[0]], target, "norm")
                if node.bias is not None:
                    out[node.bias] = self._finish(w[1][: target[0]], target, "bias")
            else:
                out[node.param] = self._finish(w[1][: target[0]], target, "bias")
            return
        if len(target) == 3:  # token positional embedding: (1, in, s, s) -> (1, s*s, in), class token first
            tokens = w[:1].flatten(2).transpose(1, 2)[:, : target[1], : target[2]]
            token = torch.normal(0.0, CLASS_TOKEN_STD, size=(1, 1, tokens.shape[2]), device=tokens.device)
            block = torch.cat([token, tokens], 1)[:, : target[1]]
        elif len(w.shape) == 2:  # classifier (classes, in)
            block = w[: target[0], : target[1]]
            if len(target) == 4:  # a 1x1-conv classifier recorded 2-D
                block = block[:, :, None, None]
        elif len(target) == 2:  # (out, in, 1, 1) -> the centre position
            block = w[: target[0], : target[1], w.shape[2] // 2, w.shape[3] // 2]
        else:
            block = w[: target[0], : target[1]]
        out[node.param] = self._finish(block, target, "weight")

    def _finish(self, block: torch.Tensor, target: tuple[int, ...], kind: str) -> tuple[torch.Tensor, tuple]:
        if self.weight_norm:
            if kind == "norm":
                block = 2 * torch.sigmoid(0.5 * block)
            elif kind == "bias":
                block = torch.tanh(0.2 * block)
            elif not _is_unscaled(target):
                block = block * weight_scale(target)
        return block, tuple(target)


def is_ghn3_config(config: dict) -> bool:
    """Whether a stored GHN config (ours or the reference's) describes a GHN-3."""
    return config.get("hypernet") == "graphormer" or (
        ("layers" in config or "heads" in config) and not config.get("is_ghn2", False)
    )
