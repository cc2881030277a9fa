"""ghninit: initialise any PyTorch model with parameters predicted by a Graph HyperNetwork (GHN-2, GHN-3).

>>> import ghninit, torchvision
>>> model = torchvision.models.resnet50()
>>> report = ghninit.initialize(model, ghn="cifar10-mini")

The package follows the data flow: :mod:`ghninit.graph` (model -> GHN graph), :mod:`ghninit.ghn`
(the hypernetworks), :mod:`ghninit.write` (predicted tensors -> the model's parameters), with
:mod:`ghninit.zoo` (where GHN weights come from) and :mod:`ghninit.training` /
:mod:`ghninit.deepnets` (how GHNs are trained); :func:`initialize` joins them. See docs/design.md.
"""

from .errors import GHNLoadError, PredictionError, ShardedModelError, TraceError
from .ghn import GHN2, GHN3, GHNBase
from .graph.build import Graph, Node, build_graph
from .graph.trace import register_leaf_module
from .initializer import initialize
from .report import Report
from .write.postprocess import Orthogonalize, orthogonalize_
from .zoo.catalog import list_ghns
from .zoo.hub import download_ghn, load_ghn

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
__version__ = "0.1.0"
