"""ghninit: initialise any PyTorch model with parameters predicted by a Graph HyperNetwork (GHN-2, GHN-3).

>>> import ghninit, torchvision
>>> model = torchvision.models.resnet50()
>>> report = ghninit.initialize(model, ghn="cifar10-mini")

The package follows the data flow: :mod:`ghninit.graph` (model -> GHN graph), :mod:`ghninit.ghn`
(the hypernetworks), :mod:`ghninit.write` (predicted tensors -> the model's parameters), with
:mod:`ghninit.zoo` (where GHN weights come from) and :mod:`ghninit.training` /
:mod:`ghninit.deepnets` (how GHNs are trained); :func:`initialize` joins them. See docs/design.md.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module defining it. They are imported on first use (PEP 562), so that
# ``python -m ghninit --help``, which imports this package first, does not import torch.
_EXPORTS = {
    "GHN2": "ghn",
    "GHN3": "ghn",
    "GHNBase": "ghn",
    "GHNLoadError": "errors",
    "Graph": "graph.build",
    "Node": "graph.build",
    "Orthogonalize": "write.postprocess",
    "PredictionError": "errors",
    "Report": "report",
    "ShardedModelError": "errors",
    "TraceError": "errors",
    "build_graph": "graph.build",
    "download_ghn": "zoo.hub",
    "initialize": "initializer",
    "list_ghns": "zoo.catalog",
    "load_ghn": "zoo.hub",
    "orthogonalize_": "write.postprocess",
    "register_leaf_module": "graph.trace",
}
__all__ = [
    "GHN2",
    "GHN3",
    "GHNBase",
    "GHNLoadError",
    "Graph",
    "Node",
    "Orthogonalize",
    "PredictionError",
    "Report",
    "ShardedModelError",
    "TraceError",
    "build_graph",
    "download_ghn",
    "initialize",
    "list_ghns",
    "load_ghn",
    "orthogonalize_",
    "register_leaf_module",
]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .errors import GHNLoadError, PredictionError, ShardedModelError, TraceError
    from .ghn import GHN2, GHN3, GHNBase
    from .graph.build import Graph, Node, build_graph
    from .graph.trace import register_leaf_module
    from .initializer import initialize
    from .report import Report
    from .write.postprocess import Orthogonalize, orthogonalize_
    from .zoo.catalog import list_ghns
    from .zoo.hub import download_ghn, load_ghn


def __getattr__(name: str) -> Any:
    """Import a public name (or a subpackage such as ``ghninit.graph``) on first use, and keep it."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
