"""Architectures of the fine-tuning benchmarks: classifiers and Faster R-CNN detectors built from them.

:func:`build_classifier` (ResNet-50, a small ViT, the 14-cell DARTS network of ``ghninit.deepnets``
and MobileNetV3), :func:`available_archs` (checked before any training),
:func:`build_detection_backbone` (a classifier's feature extractor, its modules shared) and
:func:`build_detector` (torchvision Faster R-CNN).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch import fx

from ghninit.adapt import adapt_to_cifar
from ghninit.graph.primitives import function_rule, module_rule
from ghninit.graph.trace import trace

from .init import ghninit  # noqa: F401  (importable from a source checkout too)

CIFAR_ARCHS = ("resnet50", "vit", "darts")
DETECTION_ARCHS = ("resnet50", "vit", "darts", "mobilenet")


class ArchitectureUnavailable(RuntimeError):
    """An architecture cannot be built in this installation (e.g. DARTS without ``ghninit.deepnets``)."""


def _small_vit(num_classes: int, cifar: bool) -> torchvision.models.VisionTransformer:
    # DeiT-Tiny widths (192 hidden, 3 heads, MLP 768) with 6 instead of 12 blocks.
    image_size, patch_size = (32, 4) if cifar else (224, 16)
    return torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=6,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
        num_classes=num_classes,
    )


def _darts(num_classes: int, cifar: bool) -> nn.Module:
    try:
        from ghninit.deepnets import darts
    except ImportError as err:
        raise ArchitectureUnavailable(
            "the DARTS network needs ghninit.deepnets.darts (the 14-cell DARTS network), which this "
            f"installation of ghninit does not have ({err}); choose another architecture"
        ) from err
    stem = "cifar" if cifar else "imagenet"
    try:
        return darts(num_classes=num_classes, cells=14, channels=48, stem=stem)
    except (TypeError, ValueError) as err:
        raise ArchitectureUnavailable(f"ghninit.deepnets.darts cannot build stem={stem!r}: {err}") from err


def build_classifier(arch: str, num_classes: int, cifar: bool) -> nn.Module:
    """A classification network, with torchvision's default initialisation.

    Args:
        arch: ``"resnet50"`` (torchvision), ``"vit"`` (torchvision ViT, 6 blocks of width 192,
            3 heads, MLP 768; patch 4 on 32x32 or patch 16 on 224x224), ``"darts"`` (the 14-cell,
            48-channel DARTS network of ``ghninit.deepnets``) or ``"mobilenet"`` (MobileNetV3-Large).
        num_classes: outputs of the classification layer.
        cifar: build for 32x32 inputs (ResNet stem adapted by :func:`ghninit.adapt.adapt_to_cifar`:
            3x3 stride-1 first conv holding the centre of the 7x7 kernel, no max pool; ViT patch 4;
            DARTS CIFAR stem) instead of ImageNet-sized ones.

    Raises:
        ArchitectureUnavailable: for ``"darts"`` when ``ghninit.deepnets`` is missing.
        ValueError: for an unknown name.
    """
    if arch == "resnet50":
        model = torchvision.models.resnet50(num_classes=num_classes)
        return adapt_to_cifar(model) if cifar else model
    if arch == "vit":
        return _small_vit(num_classes, cifar)
    if arch == "darts":
        return _darts(num_classes, cifar)
    if arch == "mobilenet":
        if cifar:
            raise ValueError("mobilenet is only offered as a detection backbone")
        return torchvision.models.mobilenet_v3_large(num_classes=num_classes)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {DETECTION_ARCHS}")


def available_archs(requested: Sequence[str] | None, default: Sequence[str], cifar: bool) -> list[str]:
    """Check the architectures can be built before any training starts.

    With ``requested=None`` (no ``--archs`` given) the defaults are used and an unavailable one
    (DARTS without ``ghninit.deepnets``) is dropped with a warning; an architecture the user named
    explicitly raises :class:`ArchitectureUnavailable` instead.
    """
    archs = list(default if requested is None else requested)
    kept = []
    for arch in archs:
        try:
            build_classifier(arch, 10, cifar)
        except ArchitectureUnavailable as err:
            if requested is not None:
                raise ArchitectureUnavailable(f"--archs {arch}: {err}") from err
            print(f"warning: skipping {arch}: {err}", file=sys.stderr)
            continue
        kept.append(arch)
    if not kept:
        raise ArchitectureUnavailable("no architecture left to run")
    return kept


class FeatureMaps(nn.Module):
    """Wrap a network returning one feature map so it returns ``{"0": map}``, as Faster R-CNN expects."""

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


class ViTFeatureMap(nn.Module):
    """A torchvision ViT's patch tokens as a stride-``patch_size`` feature map, for any input size.

    The grid part of the positional embedding is resized bicubically to the input's token grid;
    the class token takes part in attention and is dropped from the output.
    """

    def __init__(self, vit: torchvision.models.VisionTransformer):
        super().__init__()
        self.patch_size = vit.patch_size
        self.grid = vit.image_size // vit.patch_size
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.encoder = vit.encoder
        self.out_channels = vit.hidden_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv_proj(x)  # (B, D, h, w)
        b, d, h, w = x.shape
        pos = self.encoder.pos_embedding  # (1, 1 + grid * grid, D)
        grid_pos = pos[:, 1:].reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        if (h, w) != (self.grid, self.grid):
            grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
        tokens = (x + grid_pos).flatten(2).transpose(1, 2)
        cls = self.class_token.expand(b, -1, -1) + pos[:, :1]
        tokens = self.encoder.dropout(torch.cat([cls, tokens], dim=1))
        tokens = self.encoder.ln(self.encoder.layers(tokens))
        return OrderedDict([("0", tokens[:, 1:].transpose(1, 2).reshape(b, d, h, w))])


def _is_global_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    # ghninit's own registry decides what global average pooling is (the `glob_avg` primitive).
    if node.op == "call_module":
        rule = module_rule(modules[node.target])
        specs = rule(modules[node.target]) if rule else None
    elif node.op in ("call_function", "call_method"):
        rule = function_rule(node.target)
        specs = rule(node, modules) if rule else None
    else:
        return False
    return any(spec.primitive == "glob_avg" for spec in specs or ())


def cut_before_global_pool(model: nn.Module) -> fx.GraphModule:
    """The part of a classifier that computes the input of its last global average pooling.

    Traced with ghninit's tracer, so any network ghninit can initialise works (DARTS cells
    included); the pooling, classifier and anything else after it are dropped.

    Raises:
        ValueError: when the network has no global average pooling.
    """
    graph = trace(model)
    modules = dict(model.named_modules())
    pools = [node for node in graph.nodes if _is_global_pool(node, modules)]
    if not pools:
        raise ValueError(f"{type(model).__name__} has no global average pooling to cut the feature extractor at")
    features = pools[-1].args[0]
    output = next(node for node in graph.nodes if node.op == "output")
    graph.erase_node(output)
    graph.output(features)
    module = fx.GraphModule(model, graph)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


@torch.no_grad()
def _probe(module: nn.Module, image_size: int = 64) -> Any:
    """``module``'s output for one blank image, in eval mode (BatchNorm statistics untouched)."""
    was_training = module.training
    module.eval()
    out = module(torch.zeros(1, 3, image_size, image_size))
    module.train(was_training)
    return out


def build_detection_backbone(arch: str, classifier: nn.Module) -> nn.Module:
    """Faster R-CNN backbone made of ``classifier``'s feature extractor (its modules are shared, not copied).

    * ``resnet50``: ``layer1``-``layer4`` into a 256-channel FPN (torchvision's ``BackboneWithFPN``);
    * ``mobilenet``: ``features`` blocks 12 (stride 16) and 16 (stride 32) into a 256-channel FPN;
    * ``vit``: the patch tokens as one stride-16 map (:class:`ViTFeatureMap`);
    * ``darts`` (and any other network with global pooling): one map, the input of the last global
      average pooling (:func:`cut_before_global_pool`).

    All layers are trainable and BatchNorm layers stay ordinary (not frozen): the backbone starts
    from He or GHN parameters, not from a trained network.

    Returns:
        a module mapping images to an ordered dict of feature maps, with ``out_channels``.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    if arch == "resnet50":
        return BackboneWithFPN(
            classifier,
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            in_channels_list=[256, 512, 1024, 2048],
            out_channels=256,
        )
    if arch == "mobilenet":
        features = classifier.features
        return BackboneWithFPN(
            features,
            return_layers={"12": "0", "16": "1"},
            in_channels_list=[features[12].out_channels, features[16].out_channels],
            out_channels=256,
        )
    if arch == "vit":
        return ViTFeatureMap(classifier)
    body = cut_before_global_pool(classifier)
    return FeatureMaps(body, int(_probe(body).shape[1]))


def build_detector(
    backbone: nn.Module,
    num_classes: int = 2,
    max_size: int | None = None,
    rois_per_image: int = 512,
) -> nn.Module:
    """torchvision Faster R-CNN on ``backbone`` (from :func:`build_detection_backbone`).

    Args:
        num_classes: including the background (2 for pedestrians).
        max_size: resize images so their longer side is at most this many pixels (torchvision's
            ``min_size=800, max_size=1333`` when ``None``).
        rois_per_image: proposals sampled per image to train the box head (torchvision: 512).

    Anchors are 32 to 512 pixels with aspect ratios 0.5, 1 and 2: one size per level on the
    5-level ResNet-50 FPN, all sizes on every level otherwise (as torchvision's models do).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    sizes = (32, 64, 128, 256, 512)
    names = list(_probe(backbone).keys())
    if len(names) == len(sizes):  # ResNet-50 FPN: one anchor size per level, as torchvision's
        anchor_sizes = tuple((size,) for size in sizes)
    else:  # one map, or MobileNet's 3-level FPN: every size on every level, as torchvision's
        anchor_sizes = (sizes,) * len(names)
    anchors = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(names))
    roi_pool = MultiScaleRoIAlign(featmap_names=[n for n in names if n != "pool"], output_size=7, sampling_ratio=2)
    size_kwargs = {} if max_size is None else {"min_size": min(800, max_size), "max_size": max_size}
    return FasterRCNN(
        backbone,
        num_classes=num_classes,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_batch_size_per_image=rois_per_image,
        **size_kwargs,
    )
