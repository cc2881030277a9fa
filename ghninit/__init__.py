"""ghninit: initialise any PyTorch model with parameters predicted by a Graph HyperNetwork (GHN-2).

>>> import ghninit, torchvision
>>> model = torchvision.models.resnet50()
>>> report = ghninit.initialize(model, ghn="ghn2_imagenet.safetensors")
"""

from .ghn import GHN2
from .graph import Graph, Node, build_graph
from .hub import GHNLoadError, load_ghn
from .initializer import initialize
from .report import Report
from .trace import TraceError, register_leaf_module
from .wrapped import ShardedModelError
from .write import PredictionError

__all__ = [
    "GHN2",
    "GHNLoadError",
    "Graph",
    "Node",
    "PredictionError",
    "Report",
    "ShardedModelError",
    "TraceError",
    "build_graph",
    "initialize",
    "load_ghn",
    "register_leaf_module",
]
__version__ = "0.1.0"
