"""The interface every GHN implements, and the prediction code GHN-2 and GHN-3 share.

:class:`GHNBase` is what :func:`ghninit.initialize`, the trainer and the zoo program against: a
GHN has ``graph_rules`` (how its graphs are built), ``ve`` (virtual edges), ``max_shape``,
``num_classes`` and ``config``; it builds a model's graph (:meth:`GHNBase.build_graph`), encodes it
(``node_states``, per subclass), groups the parameter nodes by what its decoder computes at once
(``decoder_groups``), decodes a group (``_decode``) and writes the group's blocks (``_emit_group``).
The loop that ties these together (:meth:`GHNBase.predict_blocks`), ``forward``, ``predict``,
``embed_graph`` and ``classifier_matches`` exist only here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from ..graph.build import GHN2_RULES, Graph, GraphRules, build_graph
from ..write.tensors import tile


class GHNBase(nn.Module):
    """A graph hypernetwork: a model's graph in, its predicted parameter tensors out.

    Subclasses set ``graph_rules`` and implement ``node_states``, ``decoder_groups``, ``_decode``
    and ``_emit_group``; they also carry ``max_shape``, ``num_classes``, ``ve``, ``weight_norm`` and
    ``config``.
    """

    graph_rules: GraphRules = GHN2_RULES
    max_shape: tuple[int, ...]
    num_classes: int
    ve: bool
    weight_norm: bool

    @property
    def config(self) -> dict:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def virtual_edge_cutoff(self) -> int:
        """Longest shortest path turned into a virtual edge (1: none)."""
        return 50 if self.ve else 1

    def build_graph(
        self, model: nn.Module, leaf_modules: Iterable[type] = (), example_inputs: object = None
    ) -> Graph:
        """The graph of ``model`` this GHN reads (its rules and virtual edges)."""
        return build_graph(
            model,
            leaf_modules,
            virtual_edge_cutoff=self.virtual_edge_cutoff,
            rules=self.graph_rules,
            example_inputs=example_inputs,
        )

    def node_states(self, graph: Graph, predict_classifier: bool = True) -> torch.Tensor:  # pragma: no cover
        """``(N, hid)`` node states of ``graph``."""
        raise NotImplementedError

    def decoder_groups(self, graph: Graph, predict_classifier: bool = True) -> dict[object, list[int]]:
        """Parameter node indices per group decoded in one batch, in node order."""
        raise NotImplementedError  # pragma: no cover

    def _decode(self, key: object, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _emit_group(self, key: object, decoded: torch.Tensor, nodes: list, out: dict) -> None:  # pragma: no cover
        raise NotImplementedError

    def embed_graph(self, graph: Graph) -> torch.Tensor:
        """``(hid,)`` embedding of a whole architecture: the mean of its node states."""
        return self.node_states(graph).mean(0)

    def forward(self, graph: Graph, predict_classifier: bool = True) -> dict[str, torch.Tensor]:
        """Predict every parameter the graph covers.

        Returns:
            parameter name -> tensor of the parameter's shape (tiled and, with ``weight_norm``,
            normalised). The classifier is left out when ``predict_classifier`` is False.
        """
        return {
            name: tile(block, shape) for name, (block, shape) in self.predict_blocks(graph, predict_classifier).items()
        }

    def predict_blocks(
        self, graph: Graph, predict_classifier: bool = True
    ) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
        """Like :meth:`forward`, but each tensor as its (normalised) block before tiling, with the target shape.

        A weight stored transposed (:attr:`Graph.transposed`, Hugging Face's ``Conv1D``) comes in its own
        ``(in, out)`` layout.

        ``tile(block, shape)`` gives the parameter; :func:`ghninit.write.tensors.write_tiled` writes
        it without building the full tensor.
        """
        states = self.node_states(graph, predict_classifier).float()
        out: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
        for key, indices in self.decoder_groups(graph, predict_classifier).items():
            decoded = self._decode(key, states[indices])
            self._emit_group(key, decoded, [graph.nodes[i] for i in indices], out)
        for name in graph.transposed:  # a weight stored (in, out): the prediction in its layout
            if name in out:
                block, shape = out[name]
                out[name] = block.t(), tuple(shape[::-1])
        return out

    @torch.no_grad()
    def predict(
        self, model: nn.Module, predict_classifier: bool | None = None, leaf_modules: Iterable[type] = ()
    ) -> dict[str, torch.Tensor]:
        """Predicted tensors for ``model`` without touching it (name -> tensor)."""
        graph = self.build_graph(model, leaf_modules)
        if predict_classifier is None:
            predict_classifier = self.classifier_matches(graph)
        return self(graph, predict_classifier)

    def classifier_matches(self, graph: Graph) -> bool:
        """Whether the graph's classifier (or, where set, its ``output_classes``) has as many outputs as the GHN has classes."""
        if getattr(graph, "output_classes", None) is not None:
            return graph.output_classes == self.num_classes
        weight, bias = graph.classifier
        node = graph.nodes[weight if weight is not None else bias] if (weight, bias) != (None, None) else None
        return node is not None and node.shape[0] == self.num_classes
