"""ghninit: initialise any PyTorch model with parameters predicted by a Graph HyperNetwork (GHN-2).

>>> import ghninit, torchvision
>>> model = torchvision.models.resnet50()
>>> report = ghninit.initialize(model, ghn="ghn2_imagenet.safetensors")
"""

from .catalog import list_ghns
from .ghn import GHN2, GHN3
from .graph import Graph, Node, build_graph
from .hub import GHNLoadError, download_ghn, load_ghn
from .initializer import initialize
from .postprocess import Orthogonalize, orthogonalize_
from .report import Report
from .trace import TraceError, register_leaf_module
from .wrapped import ShardedModelError
from .write import PredictionError

__all__ = [
    "GHN2",
    "GHN3",
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
