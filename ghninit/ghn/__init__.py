"""The GHN-2 hypernetwork: shape encoder, gated graph network, decoders and the model itself."""

from .model import GHN2

__all__ = ["GHN2"]
