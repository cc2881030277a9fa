"""Checking GHN-2 weights against the reference's published example results (facebookresearch/ppuda).

The reference's examples (``examples/custom_cnn.py``, ``darts.py``, ``vit.py``, ``torch_models.py``
at commit 4673a42) predict all parameters of four networks and evaluate them without any training;
they publish the accuracy each should reach. :func:`check_ghn2` rebuilds those networks (a small
3-conv CNN, DARTS, the ViT genotype of DeepNets-1M, torchvision's ResNet-50 with its CIFAR stem),
predicts them with :func:`ghninit.initialize` and evaluates them with the reference's protocol:

- CIFAR-10: the 10,000 test images in the files' order, ``ToTensor`` and the CIFAR-10
  mean/std normalisation, batches of 64 in order, top-1; published to two decimals and compared
  exactly (the reference prints a warning when ``top1 != expected``), i.e. within 0.005.
- ImageNet: the 50,000 validation images, resize 256, centre crop 224, ImageNet normalisation,
  batches of 64 shuffled by a generator seeded with 1111, top-5; compared within 0.01.
- BatchNorm: after prediction every ``BatchNorm2d`` computes batch statistics (training mode,
  ``track_running_stats=False``), the rest of the network is in eval mode; no gradient.
- Every parameter is predicted, the classifier included.

Results depend on the data's pixels and order (BatchNorm uses batch statistics), so only the
original files (torchvision's CIFAR-10 download, ImageNet's validation set sorted into class
folders) can reproduce the published numbers; a subset (``limit``) or another GHN cannot, and
then no verdict is given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

BATCH_SIZE = 64
IMAGENET_SHUFFLE_SEED = 1111
#: Published results (percent) of GHN-2 on the reference's examples, and its tolerance.
PUBLISHED = {
    "ghn2-cifar10": {
        "metric": "top1",
        "tolerance": 0.005,
        "results": {"cnn": 16.84, "darts": 24.24, "resnet50": 58.62, "vit": 11.41},
    },
    "ghn2-imagenet": {"metric": "top5", "tolerance": 0.01, "results": {"darts": 12.82, "resnet50": 5.27, "vit": 4.41}},
}
NETWORKS = ("cnn", "darts", "resnet50", "vit")


class ExampleCNN(nn.Module):
    """The reference's custom CNN example: three convolutions (5x5, 3x3, 3x3) with average pooling and ReLU."""

    def __init__(self, num_classes: int = 10, channels: int = 64):
        super().__init__()
        c = channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, c, kernel_size=5),
            nn.AvgPool2d(2),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, kernel_size=3),
            nn.AvgPool2d(2),
            nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, kernel_size=3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * c, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_network(name: str, imagenet: bool) -> nn.Module:
    """One of :data:`NETWORKS`, configured as the reference's example for CIFAR-10 or ImageNet (in eval mode)."""
    from ..deepnets import VIT, Network, darts

    num_classes = 1000 if imagenet else 10
    if name == "cnn":
        model = ExampleCNN(num_classes)
    elif name == "darts":
        model = darts(
            num_classes,
            cells=14 if imagenet else 20,
            channels=48 if imagenet else 36,
            stem="imagenet" if imagenet else "cifar",
            norm="bn-track",
        )
    elif name == "vit":
        model = Network(
            VIT,
            num_classes=num_classes,
            n_cells=12,
            channels=128,
            image_size=224 if imagenet else 32,
            preproc=False,
            channel_mult=1,
            norm="bn-track",
        )
    elif name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(num_classes=num_classes)
        if not imagenet:  # the reference's adjust_net: a 3x3 stride-1 first conv and no max-pool for 32x32 images
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    else:
        raise KeyError(f"unknown example network '{name}'; choose from {', '.join(NETWORKS)}")
    return model.eval()


def batchnorm_batch_statistics(model: nn.Module) -> None:
    """Make every ``BatchNorm2d`` normalise with the statistics of the batch it sees, as the reference evaluates."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
            module.training = True


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device="cpu") -> dict:
    """Top-1 and top-5 accuracy (percent) over ``batches``, and the number of images."""
    correct1 = correct5 = total = 0
    for images, labels in batches:
        logits = model(images.to(device))
        top5 = logits.topk(5, dim=1).indices.cpu()
        hits = top5 == labels.view(-1, 1)
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        total += len(labels)
    return {"top1": 100 * correct1 / max(total, 1), "top5": 100 * correct5 / max(total, 1), "images": total}


def cifar10_batches(data_dir: str | os.PathLike, limit: int | None = None) -> tuple[list, str]:
    """The CIFAR-10 test set in batches of 64, and a note on how it was read (original files or not)."""
    from .data import load_cifar10

    root = Path(data_dir)
    data = load_cifar10(root, train=False, shuffle=True)
    note = (
        "torchvision's CIFAR-10 files, in their order"
        if not (root / "test").is_dir()
        else "an ImageFolder copy (not the original files: pixels and order differ, so published numbers need not "
        "reproduce)"
    )
    if limit is not None:
        data = type(data)(data.images[:limit], data.labels[:limit], data.mean, data.std)
    return list(data.batches(BATCH_SIZE)), note


def imagenet_batches(data_dir: str | os.PathLike, limit: int | None = None, workers: int = 4) -> Iterator:
    """ImageNet validation images (``DIR/val/<wnid>/*`` or ``DIR/<wnid>/*``) as the reference reads them."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from .data import IMAGENET_MEAN, IMAGENET_STD

    root = Path(data_dir)
    folder = root / "val" if (root / "val").is_dir() else root
    dataset = datasets.ImageFolder(
        str(folder),
        transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
    )
    generator = torch.Generator()
    generator.manual_seed(IMAGENET_SHUFFLE_SEED)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, generator=generator, num_workers=workers)
    seen = 0
    for images, labels in loader:
        if limit is not None and seen + len(labels) > limit:
            images, labels = images[: limit - seen], labels[: limit - seen]
        if len(labels):
            yield images, labels
        seen += len(labels)
        if limit is not None and seen >= limit:
            return


@dataclass
class ExampleResult:
    """One network's result; ``published`` and ``passed`` are ``None`` when no published figure applies."""

    network: str
    metric: str
    value: float
    images: int
    published: float | None
    tolerance: float
    seconds: float
    predicted_fraction: float

    @property
    def passed(self) -> bool | None:
        return None if self.published is None else abs(self.value - self.published) <= self.tolerance

    def __str__(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[self.passed]
        published = f"{self.published:6.2f}" if self.published is not None else "     -"
        note = "" if self.predicted_fraction == 1 else f"  (only {self.predicted_fraction:.1%} of parameters predicted)"
        return (
            f"{verdict:4}  {self.network:9} {self.metric} {self.value:6.2f}  published {published}  "
            f"({self.images} images, {self.seconds:.1f} s){note}"
        )


def check_ghn2(
    name: str,
    data_dir: str | os.PathLike,
    ghn=None,
    compare: bool = True,
    networks: Iterable[str] | None = None,
    limit: int | None = None,
    device: str = "cpu",
    workers: int = 4,
    log=print,
) -> list[ExampleResult]:
    """Predict and evaluate the reference's example networks; see the module docstring.

    Args:
        name: ``"ghn2-cifar10"`` or ``"ghn2-imagenet"`` (whose protocol and published results).
        data_dir: CIFAR-10 (torchvision download or ImageFolder copy) or ImageNet (``val`` folder).
        ghn: the GHN to use (a loaded GHN, name or path; default ``load_ghn(name)``, downloading it).
        compare: compare with the published results (only meaningful for the real weights).
        networks: a subset of :data:`NETWORKS` (default: all with a published result).
        limit: evaluate only the first ``limit`` images (then nothing is compared).
        log: where progress lines go.
    """
    import ghninit

    if name not in PUBLISHED:
        raise KeyError(f"no GHN-2 example results for '{name}'; there are some for {', '.join(PUBLISHED)}")
    spec = PUBLISHED[name]
    imagenet = name.endswith("imagenet")
    networks = list(networks) if networks else list(spec["results"])
    for net in networks:
        if net not in NETWORKS:
            raise KeyError(f"unknown example network '{net}'; choose from {', '.join(NETWORKS)}")
    ghn = ghninit.load_ghn(name if ghn is None else ghn) if not isinstance(ghn, nn.Module) else ghn
    if imagenet:
        cached = None
    else:
        cached, note = cifar10_batches(data_dir, limit)
        log(f"CIFAR-10 test images: {sum(len(b[1]) for b in cached)}, read from {note}")
    results = []
    for net in networks:
        start = time.perf_counter()
        torch.manual_seed(0)
        model = build_network(net, imagenet)
        report = ghninit.initialize(model, ghn=ghn, keep_classifier=False)
        batchnorm_batch_statistics(model)
        model.to(device)
        batches = cached if cached is not None else imagenet_batches(data_dir, limit, workers)
        scores = evaluate(model, batches, device)
        published = spec["results"].get(net) if compare and limit is None else None
        result = ExampleResult(
            net,
            spec["metric"],
            scores[spec["metric"]],
            scores["images"],
            published,
            spec["tolerance"],
            time.perf_counter() - start,
            report.fraction_predicted,
        )
        log(str(result))
        results.append(result)
    return results
