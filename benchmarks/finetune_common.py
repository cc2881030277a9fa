"""Shared pieces of the fine-tuning benchmarks (``finetune_cifar10.py``, ``finetune_pennfudan.py``).

The paper's claim (GHN-2, NeurIPS 2021, section 5.3, Table 6) is that parameters predicted by a GHN
are a better starting point than He initialisation for fine-tuning in low-data tasks. This module
holds what both benchmarks share:

* initialisation: :func:`resolve_ghn` (``--ghn NAME_OR_PATH``), :func:`he_init_`, :func:`initialise`;
* architectures: :func:`build_classifier` (ResNet-50, a small ViT, the 14-cell DARTS network of
  ``ghninit.deepnets`` and MobileNetV3), :func:`build_detection_backbone` and
  :func:`build_detector` (torchvision Faster R-CNN);
* data: the few-shot sampler :func:`few_shot_split`, the CIFAR-10 reader :func:`load_cifar10` and
  the Penn-Fudan reader :class:`PennFudan`;
* running: :class:`RunStore` (one JSON file per finished seed, so a stopped run can be resumed),
  :func:`run_all`, :func:`add_common_args`, and :func:`write_report` (JSON, markdown table and PNG plot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch import fx

try:
    import ghninit
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ghninit
from ghninit.adapt import adapt_to_cifar
from ghninit.hub import KNOWN_GHNS, SHIPPED_GHNS, download_ghn, file_sha256, shipped_path
from ghninit.primitives import function_rule, module_rule
from ghninit.trace import trace

INITS = ("he", "ghn", "ghn-orth", "orth")
INIT_NAMES = {"he": "He init", "ghn": "GHN init", "ghn-orth": "GHN + post-processing", "orth": "orthogonal init"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"


# ---------------------------------------------------------------------------------------------
# GHN and initialisation


def resolve_ghn(name_or_path: str) -> tuple[ghninit.GHN2, dict[str, Any]]:
    """Load the GHN named by ``--ghn`` and say exactly which weights it is.

    Looked up as :func:`ghninit.load_ghn` does (a shipped name such as ``cifar10-mini`` or a
    known name such as ``imagenet`` wins over a folder of that name). Known names and Hub repo ids
    are fetched with :func:`ghninit.hub.download_ghn` (huggingface_hub's cache), so that the
    weights file itself can be hashed.

    Returns:
        the GHN (eval mode) and a JSON-able description: ``source`` (what was asked for),
        ``resolved`` (the file or folder loaded), ``sha256`` of the weights file, ``num_classes``
        and ``max_shape``.

    Raises:
        ghninit.GHNLoadError: when nothing could be loaded; the message lists what was tried.
    """
    name = str(name_or_path)
    try:
        if name in SHIPPED_GHNS:
            found, ghn = shipped_path(name), ghninit.load_ghn(name)  # by name: its sha256 is checked
        else:
            local = Path(name).expanduser()
            found = download_ghn(name) if name in KNOWN_GHNS or not local.exists() else local
            ghn = ghninit.load_ghn(found)
    except ghninit.GHNLoadError as err:
        raise ghninit.GHNLoadError(f"--ghn {name}: {err}") from err
    weights = found if found.is_file() else found / "model.safetensors"
    return ghn, {
        "source": name,
        "resolved": str(found.resolve()),
        "sha256": file_sha256(weights) if weights.is_file() else None,
        "num_classes": ghn.num_classes,
        "max_shape": list(ghn.max_shape),
    }


@torch.no_grad()
def he_init_(model: nn.Module) -> None:
    """He (Kaiming) initialisation in place: the baseline of the paper's Table 6.

    Every Conv2d / Linear weight (and a fused attention input projection) is drawn from
    ``N(0, 2 / fan_in)`` -- the same fan-in scale GHN-2 normalises its predictions to -- with
    zero biases; normalisation layers get weight 1 and bias 0. Parameters of other kinds
    (positional embeddings, class tokens) keep the model's own initialisation.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            nn.init.kaiming_normal_(module.in_proj_weight, mode="fan_in", nonlinearity="relu")
            if module.in_proj_bias is not None:
                nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def initialise(
    model: nn.Module,
    init: str,
    ghn: ghninit.GHN2 | None = None,
    postprocess: str | ghninit.Orthogonalize = "orth-he",
) -> ghninit.Report | None:
    """He-initialise ``model``, then apply ``init``.

    * ``"he"``: nothing more;
    * ``"ghn"``: overwrite what the GHN predicts. The classifier is predicted only when its number
      of outputs equals the GHN's number of classes (``keep_classifier=None``); otherwise it stays a
      freshly He-initialised layer, as in the paper. So the He and GHN runs of a seed differ
      exactly in the parameters the GHN wrote;
    * ``"ghn-orth"``: as ``"ghn"``, with ``postprocess`` applied to the predicted conv/linear weights
      (``ghninit.initialize(..., postprocess=...)``);
    * ``"orth"``: the same post-processing applied to the He-initialised weights: random orthogonal
      weights with the same norms, the control that separates "orthogonal" from "predicted".

    Returns:
        ghninit's report for the GHN inits, ``None`` for the others.
    """
    if init not in INITS:
        raise ValueError(f"init={init!r}: expected one of {INITS}")
    he_init_(model)
    if init == "he":
        return None
    if init == "orth":
        config = ghninit.postprocess.resolve_postprocess(postprocess)
        ghninit.postprocess.apply_(model, config)
        return None
    if ghn is None:
        raise ValueError(f"init={init!r} needs a GHN (--ghn NAME_OR_PATH)")
    return ghninit.initialize(
        model, ghn=ghn, keep_classifier=None, postprocess=postprocess if init == "ghn-orth" else None
    )


def report_summary(report: ghninit.Report | None) -> dict[str, Any] | None:
    """The JSON-able part of a ghninit report that results files keep."""
    if report is None:
        return None
    return {
        "n_params_predicted": report.n_params_predicted,
        "n_params_total": report.n_params_total,
        "classifier_predicted": report.classifier_predicted,
        "skipped": sorted(report.skipped),
        **({"postprocess": report.postprocess, "postprocessed": len(report.postprocessed)} if report.postprocess else {}),
    }


# ---------------------------------------------------------------------------------------------
# Architectures

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


# ---------------------------------------------------------------------------------------------
# Few-shot sampler and CIFAR-10


@dataclass(frozen=True)
class FewShotSplit:
    """Indices of a few-shot training set.

    Attributes:
        train: all sampled images (``shots`` per class), class by class.
        fit: ``train`` minus the held-out images: what a grid-search candidate is trained on.
        val: the held-out images (``holdout / num_classes`` per class), disjoint from ``fit``.
    """

    train: list[int]
    fit: list[int]
    val: list[int]


def few_shot_split(labels: Sequence[int], shots: int, holdout: int, seed: int) -> FewShotSplit:
    """Draw ``shots`` images per class, and hold ``holdout`` of them out, the same number per class.

    Deterministic for a seed (a private ``torch.Generator``; the global RNG is not touched).

    Raises:
        ValueError: when a class has fewer than ``shots`` images, or ``holdout`` is not a multiple
            of the number of classes, or leaves no image of a class to fit on.
    """
    classes = sorted(set(int(label) for label in labels))
    if holdout % len(classes):
        raise ValueError(f"holdout={holdout} is not a multiple of the {len(classes)} classes")
    per_class_val = holdout // len(classes)
    if per_class_val >= shots and holdout:
        raise ValueError(f"holdout={holdout} leaves no image per class to fit on with shots={shots}")
    by_class: dict[int, list[int]] = {c: [] for c in classes}
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    generator = torch.Generator().manual_seed(seed)
    train, fit, val = [], [], []
    for c in classes:
        pool = by_class[c]
        if len(pool) < shots:
            raise ValueError(f"class {c} has {len(pool)} images, fewer than shots={shots}")
        chosen = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:shots].tolist()]
        train += chosen
        val += chosen[:per_class_val]
        fit += chosen[per_class_val:]
    return FewShotSplit(train, fit, val)


def read_image(path: str | os.PathLike, mode: str | None = None) -> torch.Tensor:
    """An image file as a uint8 tensor ``(C, H, W)``, read with Pillow.

    Args:
        mode: Pillow mode to convert to (``"RGB"``); ``None`` keeps the stored values (an
            instance mask's ids).

    Raises:
        ValueError: naming the file when it cannot be decoded.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.array(image.convert(mode) if mode else image)
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: cannot be decoded as an image ({err})") from err
    tensor = torch.from_numpy(array)
    return tensor.permute(2, 0, 1).contiguous() if tensor.dim() == 3 else tensor[None]


class ImageSet:
    """Labelled 32x32 images read on demand: an ``ImageFolder`` tree or torchvision's CIFAR-10 arrays.

    Attributes:
        labels: one class index per image.
        source: where the images come from.
    """

    def __init__(self, labels: list[int], source: str, paths: list[str] | None = None, array: Any = None):
        self.labels, self.source, self._paths, self._array = labels, source, paths, array

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """``(len(indices), 3, 32, 32)`` uint8 images."""
        if self._array is not None:
            return torch.from_numpy(self._array[list(indices)]).permute(0, 3, 1, 2).contiguous()
        out = torch.empty(len(indices), 3, 32, 32, dtype=torch.uint8)
        for row, i in enumerate(indices):
            image = read_image(self._paths[i], "RGB")
            if tuple(image.shape) != (3, 32, 32):
                raise ValueError(f"{self._paths[i]}: expected a 32x32 image, got {tuple(image.shape[1:])}")
            out[row] = image
        return out


def load_cifar10(data_dir: str | os.PathLike, train: bool, download: bool = False) -> ImageSet:
    """The CIFAR-10 training or test set.

    ``data_dir`` may hold an ``ImageFolder`` tree (``train/<class>/*``, ``test/<class>/*``, class
    folders named as torchvision's classes) or torchvision's ``cifar-10-batches-py``; with
    ``download=True`` the latter is downloaded there when neither is present.

    Raises:
        FileNotFoundError: naming the folder and the layouts looked for.
    """
    root = Path(data_dir)
    folder = root / ("train" if train else "test")
    if folder.is_dir():
        dataset = torchvision.datasets.ImageFolder(str(folder))
        if tuple(dataset.classes) != CIFAR10_CLASSES:
            raise ValueError(f"{folder}: class folders {dataset.classes} are not CIFAR-10's {list(CIFAR10_CLASSES)}")
        return ImageSet(list(dataset.targets), str(folder), paths=[p for p, _ in dataset.samples])
    if download or (root / "cifar-10-batches-py").is_dir():
        dataset = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
        return ImageSet(list(dataset.targets), str(root / "cifar-10-batches-py"), array=dataset.data)
    raise FileNotFoundError(
        f"CIFAR-10 not found in {root}: expected {folder}/<class>/*.jpg|png or {root}/cifar-10-batches-py; "
        "pass --download to fetch it there"
    )


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of a uint8 batch ``(B, 3, H, W)``."""
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    out = torch.empty_like(images)
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flip else crop
    return out


def normalize(
    images: torch.Tensor, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` to normalised float32."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


# ---------------------------------------------------------------------------------------------
# Penn-Fudan


_BOX_LINE = re.compile(r"Bounding box for object (\d+).*?:\s*\((\d+),\s*(\d+)\)\s*-\s*\((\d+),\s*(\d+)\)")


def find_pennfudan(data_dir: str | os.PathLike, download: bool = False) -> Path:
    """The ``PennFudanPed`` folder: ``data_dir`` itself or ``data_dir/PennFudanPed``.

    With ``download=True`` and neither present, the official archive is downloaded from
    :data:`PENNFUDAN_URL` and extracted into ``data_dir``.

    Raises:
        FileNotFoundError: naming the folders looked at.
    """
    root = Path(data_dir)
    for candidate in (root, root / "PennFudanPed"):
        if (candidate / "PNGImages").is_dir():
            return candidate
    if download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(PENNFUDAN_URL, download_root=str(root))
        if (root / "PennFudanPed" / "PNGImages").is_dir():
            return root / "PennFudanPed"
        raise FileNotFoundError(
            f"{PENNFUDAN_URL} was extracted into {root} but {root}/PennFudanPed/PNGImages is missing"
        )
    raise FileNotFoundError(
        f"Penn-Fudan not found: neither {root}/PNGImages nor {root}/PennFudanPed/PNGImages exists; "
        "pass --data-dir pointing at a PennFudanPed folder, or --download to fetch it"
    )


def read_annotation_boxes(path: str | os.PathLike) -> torch.Tensor:
    """Boxes of a Penn-Fudan ``Annotation/*.txt`` file, ``(N, 4)`` float ``(x1, y1, x2, y2)``.

    The file counts pixels from (1, 1); the boxes returned count from 0 like
    :func:`boxes_from_mask`, i.e. one is subtracted from every coordinate.

    Raises:
        ValueError: naming the file when it holds no box.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    rows = [[float(v) - 1 for v in match[1:]] for match in _BOX_LINE.findall(text)]
    if not rows:
        raise ValueError(f"{path}: no 'Bounding box for object' line")
    return torch.tensor(rows)


def boxes_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance ids and boxes of an instance mask ``(H, W)`` (0 = background, k = instance k).

    Returns:
        ``ids`` ``(N,)`` and ``boxes`` ``(N, 4)`` float ``(x1, y1, x2, y2)``: the first and last
        pixel column and row of each instance, counted from 0.
    """
    from torchvision.ops import masks_to_boxes

    ids = torch.unique(mask)
    ids = ids[ids != 0]
    return ids, masks_to_boxes(mask[None] == ids[:, None, None])


class PennFudan(torch.utils.data.Dataset):
    """Penn-Fudan pedestrians in the original layout (``PNGImages/``, ``PedMasks/``).

    Items are ``(image, target)`` as torchvision's detection models take them: a float image
    ``(3, H, W)`` in [0, 1] and ``{"boxes", "labels", "image_id", "area", "iscrowd"}``, boxes
    computed from the instance masks, label 1 for every pedestrian.

    Raises:
        FileNotFoundError: when the folder has no images, or an image has no mask (the message
            names the file).
        ValueError: when an image or mask cannot be decoded, the two differ in size, or a mask
            has no pedestrian (the message names the file).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        image_dir, mask_dir = self.root / "PNGImages", self.root / "PedMasks"
        self.images = sorted(image_dir.glob("*.png")) if image_dir.is_dir() else []
        if not self.images:
            raise FileNotFoundError(f"{image_dir}: no .png images (expected the PennFudanPed layout)")
        self.masks = [mask_dir / f"{p.stem}_mask.png" for p in self.images]
        for image, mask in zip(self.images, self.masks):
            if not mask.is_file():
                raise FileNotFoundError(f"{mask}: missing instance mask for {image}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = read_image(self.images[index], "RGB")
        mask = read_image(self.masks[index])
        if mask.shape[0] != 1 or mask.shape[1:] != image.shape[1:]:
            raise ValueError(
                f"{self.masks[index]}: mask of shape {tuple(mask.shape)} does not match image "
                f"{self.images[index].name} of size {tuple(image.shape[1:])}"
            )
        ids, boxes = boxes_from_mask(mask[0])
        if len(ids) == 0:
            raise ValueError(f"{self.masks[index]}: the mask has no pedestrian (all pixels are 0)")
        target = {
            "boxes": boxes,
            "labels": torch.ones(len(ids), dtype=torch.int64),
            "image_id": torch.tensor(index),
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
            "iscrowd": torch.zeros(len(ids), dtype=torch.int64),
        }
        return image.float() / 255, target


def pennfudan_split(n: int, test: int = 50, shuffle_seed: int = 1) -> tuple[list[int], list[int]]:
    """The tutorial's split: a permutation fixed by ``shuffle_seed``, the last ``test`` images held out.

    Same as ``torch.manual_seed(1); torch.randperm(n)`` in torchvision's detection tutorial, but
    without touching the global RNG.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    return order[:-test], order[-test:]


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flip an image ``(3, H, W)`` and its boxes left-right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - 1 - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


# ---------------------------------------------------------------------------------------------
# Results: resumable per-seed runs and reports


class ConfigMismatch(RuntimeError):
    """A results folder holds runs made with another configuration."""


class RunStore:
    """One JSON file per finished (architecture, initialisation, seed) under ``out_dir/runs/``.

    A stopped benchmark loses no finished seed: rerun the same command and finished runs are read
    back instead of trained again. GHN runs are filed under the first 12 hex digits of their
    GHN's sha256 (``vit-ghn-1a2b3c4d5e6f-seed0.json``), so He runs are shared and runs with
    different GHNs sit side by side. A file made with another configuration raises
    :class:`ConfigMismatch` (use another ``--out-dir`` or ``--overwrite``).
    """

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False):
        self.dir = Path(out_dir) / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite

    def path(self, arch: str, init: str, seed: int, config: dict[str, Any]) -> Path:
        tag = re.sub(r"[^\w.-]", "_", str(config["ghn"])[:12]) + "-" if config.get("ghn") else ""
        if config.get("postprocess"):  # "<preset>: <settings>"
            tag += re.sub(r"[^\w.-]", "_", str(config["postprocess"]).split(":")[0]) + "-"
        return self.dir / f"{arch}-{init}-{tag}seed{seed}.json"

    def load(self, arch: str, init: str, seed: int, config: dict[str, Any]) -> dict[str, Any] | None:
        """The finished run, or ``None`` when there is none (or ``overwrite`` is set)."""
        path = self.path(arch, init, seed, config)
        if self.overwrite or not path.is_file():
            return None
        record = json.loads(path.read_text())
        expected = json.loads(json.dumps(config))
        if record.get("config") != expected:
            stored = record.get("config") or {}
            differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            raise ConfigMismatch(
                f"{path} was made with another configuration (differs in: {', '.join(differ)}); "
                "pass another --out-dir, or --overwrite to redo it"
            )
        return record

    def save(self, record: dict[str, Any]) -> Path:
        """Write a finished run (with its ``config``) atomically: a stop mid-write leaves no half file."""
        path = self.path(record["arch"], record["init"], record["seed"], record["config"])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        return path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: Sequence[float], signed: bool = False) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {std:.2f} (n={len(values)})" if len(values) > 1 else f"{text} (n=1)"


def paired_differences(runs: Iterable[dict[str, Any]], arch: str, init: str, base: str = "he") -> list[float]:
    """``final(init) - final(base)`` for every seed that has both runs of ``arch``, in seed order."""
    finals: dict[str, dict[int, float]] = {init: {}, base: {}}
    for r in runs:
        if r["arch"] == arch and r["init"] in finals:
            finals[r["init"]][r["seed"]] = r["final"]
    return [finals[init][seed] - finals[base][seed] for seed in sorted(set(finals[init]) & set(finals[base]))]


def summarise(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{arch: {init: {"mean", "std", "n", "values"}}}`` of the runs' ``final`` values, in run order."""
    runs = list(runs)
    summary: dict[str, dict[str, Any]] = {}
    for arch in dict.fromkeys(r["arch"] for r in runs):
        summary[arch] = {}
        for init in INITS:
            values = [r["final"] for r in runs if r["arch"] == arch and r["init"] == init]
            if values:
                mean, std = mean_std(values)
                summary[arch][init] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return summary


def write_report(
    out_dir: str | os.PathLike,
    stem: str,
    title: str,
    metric: str,
    runs: Iterable[dict[str, Any]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write ``<stem>.json``, ``<stem>.md`` (table, mean ± std over seeds) and ``<stem>.png``.

    Each run is a dict with ``arch``, ``init``, ``seed``, ``final`` (the metric after the last
    epoch, in %) and ``curve`` (``{"epochs": [...], "values": [...]}``).

    Returns:
        the summary, as :func:`summarise` gives it.
    """
    runs = list(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs)
    archs = list(summary)
    inits = [i for i in INITS if any(r["init"] == i for r in runs)]
    (out / f"{stem}.json").write_text(
        json.dumps({"title": title, "metric": metric, "meta": meta, "summary": summary, "runs": runs}, indent=1)
    )

    paired = [i for i in inits if i != "he"] if "he" in inits else []
    header = ["architecture"] + [INIT_NAMES[i] for i in inits] + [f"{i} - He (paired)" for i in paired]
    lines = [f"## {title}", "", f"{metric}, mean ± std over seeds (n = number of seeds).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch in archs:
        cells = [arch]
        for init in inits:
            cells.append(_cell(summary[arch].get(init, {}).get("values", [])))
        for init in paired:
            differences = paired_differences(runs, arch, init)
            cells.append(_cell(differences, signed=True) if differences else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {key}: {value}" for key, value in meta.items()]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    _plot(out / f"{stem}.png", title, metric, runs, archs, inits)
    return summary


def _plot(path: Path, title: str, metric: str, runs: list[dict[str, Any]], archs: list[str], inits: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = max(len(archs), 1)
    fig, axes = plt.subplots(1, panels, figsize=(max(6.5, 4.5 * panels), 3.8), squeeze=False)
    colours = {"he": "tab:blue", "ghn": "tab:orange", "ghn-orth": "tab:green", "orth": "tab:gray"}
    for ax, arch in zip(axes[0], archs):
        for init in inits:
            curves = [r["curve"] for r in runs if r["arch"] == arch and r["init"] == init]
            if not curves:
                continue
            epochs = curves[0]["epochs"]
            stacked = torch.tensor([c["values"] for c in curves if c["epochs"] == epochs], dtype=torch.float64)
            mean = stacked.mean(0)
            label = f"{INIT_NAMES[init]} (n={len(stacked)})"
            ax.plot(epochs, mean.tolist(), marker="o", ms=3, color=colours[init], label=label)
            if len(stacked) > 1:
                std = stacked.std(0)
                ax.fill_between(epochs, (mean - std).tolist(), (mean + std).tolist(), color=colours[init], alpha=0.2)
        ax.set_title(arch)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_all(
    archs: Sequence[str],
    inits: Sequence[str],
    seeds: Sequence[int],
    store: RunStore,
    protocol: dict[str, Any],
    ghn_info: dict[str, Any] | None,
    run: Callable[[str, str, int], dict[str, Any]],
    on_update: Callable[[list[dict[str, Any]]], Any] = lambda records: None,
    postprocess: str | None = None,
) -> list[dict[str, Any]]:
    """Run (or read back) every (seed, architecture, initialisation), seed by seed.

    ``run(arch, init, seed)`` returns a record with at least ``final`` and ``curve``; it is saved
    with its configuration (:func:`run_config`) as soon as it finishes, and ``on_update`` is
    called with all records so far (to write the report), so a stopped benchmark keeps every
    finished seed and a rerun of the same command carries on where it stopped.
    """
    records: list[dict[str, Any]] = []
    for seed in seeds:
        for arch in archs:
            for init in inits:
                config = json.loads(json.dumps(run_config(protocol, init, ghn_info, postprocess)))
                record = store.load(arch, init, seed, config)
                if record is None:
                    record = {"arch": arch, "init": init, "seed": seed, "config": config, **run(arch, init, seed)}
                    print(f"{arch} {init} seed {seed}: {record['final']:.2f} -> {store.save(record)}", file=sys.stderr)
                else:
                    print(
                        f"{arch} {init} seed {seed}: {record['final']:.2f} (read back from {store.path(arch, init, seed, config)})",
                        file=sys.stderr,
                    )
                records.append(record)
                on_update(records)
    return records


def add_common_args(
    parser: argparse.ArgumentParser, archs: Sequence[str], default_archs: Sequence[str], out_dir: str
) -> None:
    """The options both benchmarks share (architectures, initialisations, GHN, seeds, output)."""
    parser.add_argument(
        "--archs",
        nargs="+",
        choices=archs,
        default=None,
        help=f"architectures (default: {' '.join(default_archs)}; darts is skipped with a warning when "
        "ghninit.deepnets is missing, and is an error when named here)",
    )
    parser.add_argument(
        "--init",
        nargs="+",
        choices=INITS,
        default=list(INITS),
        help="initialisations to compare (default: all): he; ghn; ghn-orth (GHN, then --postprocess); "
        "orth (He, then --postprocess: random orthogonal weights, the control for ghn-orth)",
    )
    parser.add_argument(
        "--postprocess",
        default="orth-he",
        choices=sorted(ghninit.postprocess.PRESETS),
        help="post-processing of ghn-orth and orth (ghninit.postprocess presets): orth-he (default: "
        "orthogonalise, He's norm) or orth (the recipe of Knyazev, arXiv 2207.10049: unit singular values)",
    )
    parser.add_argument(
        "--ghn",
        default="imagenet",
        metavar="NAME_OR_PATH",
        help="GHN for --init ghn: a .safetensors file, a folder, a name shipped in ghninit/weights "
        "(e.g. cifar10-mini), a known name (imagenet, cifar10) or a Hub repo id (default: imagenet, as in the paper)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument(
        "--out-dir",
        default=out_dir,
        help=f"where results go (default: {out_dir}); finished seeds are kept in OUT_DIR/runs/",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo runs already finished in --out-dir")
    parser.add_argument(
        "--quick", action="store_true", help="a few-minute smoke run (the defaults it changes are listed at the end)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def fill_defaults(args: argparse.Namespace, full: dict[str, Any], quick: dict[str, Any]) -> argparse.Namespace:
    """Set every option left at ``None`` from ``quick`` (with ``--quick``) or ``full``."""
    for key, value in full.items():
        if getattr(args, key) is None:
            setattr(args, key, quick.get(key, value) if args.quick else value)
    return args


def progress(iterable: Iterable[Any], desc: str, total: int | None = None) -> Any:
    """tqdm progress on stderr; updates at most every 30 s when stderr is not a terminal (logs)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        desc=desc,
        total=total,
        leave=False,
        mininterval=0.5 if sys.stderr.isatty() else 30,
        dynamic_ncols=True,
    )


def run_config(
    protocol: dict[str, Any], init: str, ghn_info: dict[str, Any] | None, postprocess: str | None = None
) -> dict[str, Any]:
    """What a finished run must match to be reused: the protocol, plus the GHN's weights for GHN runs
    and the post-processing (its full settings) for ``ghn-orth`` and ``orth`` runs."""
    config = dict(protocol)
    if init in ("ghn", "ghn-orth") and ghn_info is not None:
        config["ghn"] = ghn_info["sha256"] or ghn_info["resolved"]
    if init in ("ghn-orth", "orth") and postprocess is not None:
        config["postprocess"] = f"{postprocess}: {ghninit.postprocess.resolve_postprocess(postprocess).describe()}"
    return config


def run_benchmark(
    stem: str,
    title: str,
    metric: str,
    description: str,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    ghn_info: dict[str, Any] | None,
    data: str | os.PathLike,
    archs: Sequence[str],
    protocol: dict[str, Any],
    run: Callable[[str, str, int], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Run (or read back) every seed of a fine-tuning benchmark, keeping its report up to date.

    ``stem`` names the script (``benchmarks/<stem>.py``) and its outputs in ``args.out_dir``;
    ``description`` is the protocol line under the table. Prints the markdown table at the end.

    Returns:
        the summary, as :func:`summarise` gives it.
    """
    meta = describe_run(f"{stem}.py", argv, ghn_info, description, args.seeds, data)

    def report(records: list[dict[str, Any]]) -> None:
        write_report(args.out_dir, stem, title, metric, records, meta)

    store = RunStore(args.out_dir, args.overwrite)
    postprocess = getattr(args, "postprocess", None)
    records = run_all(archs, args.init, args.seeds, store, protocol, ghn_info, run, report, postprocess)
    print(Path(args.out_dir, f"{stem}.md").read_text())
    return summarise(records)


def describe_run(
    script: str,
    argv: Sequence[str] | None,
    ghn_info: dict[str, Any] | None,
    protocol: str,
    seeds: Sequence[int],
    data: str | os.PathLike,
) -> dict[str, str]:
    """The lines under a results table: command, GHN weights, protocol, seeds, data, machine."""
    import platform

    command = shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
    if ghn_info is None:
        ghn = "not used"
    else:
        ghn = f"`{ghn_info['source']}` -> `{ghn_info['resolved']}`, sha256 {ghn_info['sha256'] or 'n/a'}, {ghn_info['num_classes']} classes"
    return {
        "command": f"`{command}`",
        "GHN": ghn,
        "protocol": protocol,
        "seeds": " ".join(map(str, seeds)),
        "data": str(Path(data).resolve()),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
