"""Image data for GHN training and evaluation: CIFAR-10 (torchvision or an ImageFolder copy) and ImageNet.

CIFAR-10 is small enough to decode once into a ``uint8`` tensor; batches are then cut from it
with augmentation done in torch. Every batch is a pure function of ``(seed, step)``: the epoch's
order comes from a generator seeded with ``(seed, epoch)`` and the random crops and flips from one
seeded with ``(seed, step)``. Resuming at a step therefore sees exactly the batches an
uninterrupted run would have seen, with any number of processes.

Layouts accepted for CIFAR-10 (``root``):
- an ``ImageFolder`` tree ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg`` whose class
  folders sort into torchvision's label order (airplane ... truck); images are put in one fixed
  random order, like the original files, so that sequential test batches mix classes (BatchNorm
  with test-batch statistics, the paper's protocol, needs that);
- torchvision's own download (``root/cifar-10-batches-py``), fetched with ``download=True``.

ImageNet: ``root/train/<wnid>/*`` and ``root/val/<wnid>/*`` (torchvision ``ImageFolder``), read
with the usual transforms through a ``DataLoader``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_cache_dir() -> Path:
    """Where decoded data sets are cached (``$GHNINIT_CACHE`` or ``~/.cache/ghninit``)."""
    return Path(os.environ.get("GHNINIT_CACHE", Path.home() / ".cache" / "ghninit"))


@dataclass
class ImageTensors:
    """A whole data set in memory: ``images`` uint8 ``(N, 3, H, W)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float32."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255 - mean) / std

    def subset(self, n: int | None) -> ImageTensors:
        """``n`` images (all if None), the first ones of each class in equal numbers, in storage order."""
        if n is None or n >= len(self):
            return self
        classes = torch.unique(self.labels)
        per = -(-n // len(classes))
        keep = torch.cat([torch.nonzero(self.labels == c).flatten()[:per] for c in classes])
        idx = torch.sort(keep).values[:n]
        return ImageTensors(self.images[idx], self.labels[idx], self.mean, self.std)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential, un-augmented batches (evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.normalize(self.images[start : start + batch_size]), self.labels[start : start + batch_size]


def load_cifar10(
    root: str | os.PathLike, train: bool, download: bool = False, cache: bool = True, shuffle: bool = True
) -> ImageTensors:
    """CIFAR-10 as :class:`ImageTensors` from an ImageFolder copy or torchvision's download.

    Decoded ImageFolder copies are cached under :func:`default_cache_dir` (keyed by the folder's
    path and file list), never written next to the data. ``shuffle=False`` keeps an ImageFolder
    copy in class-by-class, file-name order (the fine-tuning benchmarks index it so); torchvision's
    files keep their own order either way.
    """
    root = Path(root)
    part = root / ("train" if train else "test")
    if part.is_dir():
        data = _load_image_folder(part, cache)
        if not shuffle:
            return data
        # Folder order is class by class; BatchNorm with test-batch statistics needs mixed batches
        # (the original CIFAR-10 files are in random order), so use one fixed random order.
        perm = torch.randperm(len(data), generator=seeded_generator(0, 0))
        return ImageTensors(data.images[perm], data.labels[perm], data.mean, data.std)
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(root), train=train, download=download)
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return ImageTensors(images, torch.as_tensor(ds.targets, dtype=torch.long))


def _load_image_folder(folder: Path, cache: bool) -> ImageTensors:
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if set(classes) == set(CIFAR10_CLASSES):
        classes = list(CIFAR10_CLASSES)
    files = [(c, sorted(f.name for f in (folder / name).iterdir())) for c, name in enumerate(classes)]
    key = hashlib.sha1(repr((str(folder.resolve()), files)).encode()).hexdigest()[:16]
    cache_file = default_cache_dir() / f"imagefolder-{key}.pt"
    if cache and cache_file.exists():
        data = torch.load(cache_file, weights_only=True)
        return ImageTensors(data["images"], data["labels"])
    images, labels = [], []
    for c, names in files:
        for name in names:
            with Image.open(folder / classes[c] / name) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(c)
    out = ImageTensors(
        torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()), torch.tensor(labels, dtype=torch.long)
    )
    if cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"images": out.images, "labels": out.labels}, tmp)
        tmp.replace(cache_file)
    return out


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from a tuple of integers (stable across runs and processes)."""
    seed = int.from_bytes(hashlib.sha256(repr(tuple(int(k) for k in keys)).encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(seed & ((1 << 63) - 1))


class TrainBatches:
    """Augmented training batches, batch ``step`` a pure function of ``(seed, step)``.

    Each epoch visits a random permutation of the data (the last incomplete batch is dropped);
    each image gets a random crop from the image padded by ``padding`` zeros and a random
    horizontal flip, as in the reference CIFAR-10 pipeline.
    """

    def __init__(self, data: ImageTensors, batch_size: int, seed: int = 0, padding: int = 4):
        if batch_size > len(data):
            raise ValueError(f"batch size {batch_size} is larger than the data set ({len(data)} images)")
        self.data, self.batch_size, self.seed, self.padding = data, batch_size, seed, padding
        self.steps_per_epoch = len(data) // batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.data), generator=seeded_generator(self.seed, 1, epoch)))
        return self._perm[1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images ``(B, 3, H, W)`` and labels ``(B,)`` of global step ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self._order(epoch)[pos * self.batch_size : (pos + 1) * self.batch_size]
        images, labels = self.data.images[idx], self.data.labels[idx]
        gen = seeded_generator(self.seed, 2, step)
        b, _, h, w = images.shape
        p = self.padding
        if p:
            padded = F.pad(images, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(b, 3, h, w + 2 * p)
            images = padded.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, 3, h, w)
            images = images.gather(3, cols)
        flip = torch.rand(b, generator=gen) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return self.data.normalize(images), labels


def imagenet_loaders(root: str | os.PathLike, batch_size: int, workers: int = 4, image_size: int = 224):
    """``(train_loader, val_loader)`` over an ImageNet ImageFolder tree (standard transforms)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = datasets.ImageFolder(
        str(Path(root) / "train"),
        transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(0.4, 0.4, 0.4, 0.2),
                transforms.ToTensor(),
                normalize,
            ]
        ),
    )
    val = datasets.ImageFolder(
        str(Path(root) / "val"),
        transforms.Compose(
            [
                transforms.Resize(max(image_size, 256)),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                normalize,
            ]
        ),
    )
    return (
        DataLoader(train, batch_size, shuffle=True, num_workers=workers, drop_last=True),
        DataLoader(val, batch_size, shuffle=False, num_workers=workers),
    )
