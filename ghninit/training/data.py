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

Any other image data set (``python -m ghninit train --data DIR``): an ``ImageFolder`` tree
``root/train/<class>/*`` with ``root/test/`` or ``root/val/`` for evaluation, decoded once at one
square size (images of another size or shape are resized to it), see :func:`load_image_folder`;
its :class:`FolderInfo` records what a GHN trained on it has seen (classes, size, image count,
normalisation statistics, a sha256 of the file list).

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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def folder_classes(folder: Path) -> list[str]:
    """Class folder names in label order: sorted, or torchvision's order for CIFAR-10's ten classes."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    return list(CIFAR10_CLASSES) if set(classes) == set(CIFAR10_CLASSES) else classes


def folder_files(folder: Path, classes: list[str]) -> list[tuple[int, list[str]]]:
    """``(label, sorted image file names)`` per class folder (files with an image suffix only)."""
    return [
        (c, sorted(f.name for f in (folder / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        for c, name in enumerate(classes)
    ]


def _load_image_folder(
    folder: Path, cache: bool, size: int | None = None, classes: list[str] | None = None
) -> ImageTensors:
    from PIL import Image

    classes = folder_classes(folder) if classes is None else classes
    files = folder_files(folder, classes)
    key_of = (str(folder.resolve()), files) if size is None else (str(folder.resolve()), files, size)
    key = hashlib.sha1(repr(key_of).encode()).hexdigest()[:16]
    cache_file = default_cache_dir() / f"imagefolder-{key}.pt"
    if cache and cache_file.exists():
        data = torch.load(cache_file, weights_only=True)
        return ImageTensors(data["images"], data["labels"])
    images, labels = [], []
    for c, names in files:
        for name in names:
            with Image.open(folder / classes[c] / name) as im:
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
            labels.append(c)
    if not images:
        raise ValueError(f"{folder}: no images (files ending in {', '.join(IMAGE_SUFFIXES)}) in its class folders")
    out = ImageTensors(
        torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()), torch.tensor(labels, dtype=torch.long)
    )
    if cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"images": out.images, "labels": out.labels}, tmp)
        tmp.replace(cache_file)
    return out


@dataclass
class FolderInfo:
    """What a GHN trained on an ImageFolder tree has seen (written into its card)."""

    name: str
    path: str
    classes: list[str]
    image_size: int
    train_images: int
    eval_split: str | None
    eval_images: int
    files_sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stats_images: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """JSON-ready fields, with ``num_classes``."""
        from dataclasses import asdict

        return {**asdict(self), "num_classes": self.num_classes}


def eval_split_of(root: Path) -> str | None:
    """``"test"`` or ``"val"``: the evaluation folder of an ImageFolder tree, if it has one."""
    return next((name for name in ("test", "val") if (root / name).is_dir()), None)


def files_sha256(root: Path, splits: list[str], classes: list[str]) -> str:
    """sha256 of the sorted relative paths (``split/class/file``, one a line) of the images of ``splits``."""
    lines = sorted(
        f"{split}/{classes[c]}/{name}"
        for split in splits
        for c, names in folder_files(root / split, classes)
        for name in names
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def default_image_size(folder: Path, classes: list[str], sample: int = 200) -> int:
    """The (low) median shorter side of up to ``sample`` training images (a fixed spread over the classes)."""
    import statistics

    from PIL import Image

    paths = [folder / classes[c] / name for c, names in folder_files(folder, classes) for name in names]
    if not paths:
        raise ValueError(f"{folder}: no images (files ending in {', '.join(IMAGE_SUFFIXES)}) in its class folders")
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step][:sample]:
        with Image.open(path) as im:
            sides.append(min(im.size))
    return int(statistics.median_low(sides))


def image_statistics(data: ImageTensors, sample: int = 2000) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel mean and std of pixel values in [0, 1] over up to ``sample`` images (a fixed random sample)."""
    n = min(sample, len(data))
    idx = torch.randperm(len(data), generator=seeded_generator(0, 5))[:n]
    pixels = data.images[idx].float().div_(255).transpose(0, 1).reshape(3, -1)
    mean = tuple(round(float(v), 6) for v in pixels.mean(1))
    std = tuple(round(float(v), 6) for v in pixels.std(1))
    return mean, std, n


def load_image_folder(
    root: str | os.PathLike, image_size: int | None = None, cache: bool = True, multiple: int = 1
) -> tuple[ImageTensors, ImageTensors | None, FolderInfo]:
    """Any ImageFolder tree (``train/<class>/*``, and ``test/`` or ``val/``) decoded at one square size.

    Args:
        root: the tree's root.
        image_size: the side images are resized to (default: :func:`default_image_size`, rounded
            to the nearest positive multiple of ``multiple``).
        cache: keep the decoded tensors under :func:`default_cache_dir`.
        multiple: what the default size is rounded to.

    Returns:
        ``(train, eval or None, info)``; both splits in one fixed random order (mixed batches for
        BatchNorm with batch statistics) and normalised with statistics of the training images.

    Raises:
        ValueError: ``root/train`` is missing, or holds no class folder or no image.
    """
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise ValueError(
            f"{root}: no train/ folder; an ImageFolder tree is train/<class>/<image> (and test/ or val/ to evaluate)"
        )
    classes = folder_classes(train_dir)
    if not classes:
        raise ValueError(f"{train_dir}: no class folders; put the images of each class in train/<class>/")
    if image_size:
        size = int(image_size)
    else:
        size = max(multiple, multiple * round(default_image_size(train_dir, classes) / multiple))
    split = eval_split_of(root)
    parts = {}
    for name in ["train"] + ([split] if split else []):
        data = _load_image_folder(root / name, cache, size, classes)
        perm = torch.randperm(len(data), generator=seeded_generator(0, 0))
        parts[name] = ImageTensors(data.images[perm], data.labels[perm])
    mean, std, n = image_statistics(parts["train"])
    for data in parts.values():
        data.mean, data.std = mean, std
    info = FolderInfo(
        name=root.resolve().name,
        path=str(root.resolve()),
        classes=classes,
        image_size=size,
        train_images=len(parts["train"]),
        eval_split=split,
        eval_images=len(parts[split]) if split else 0,
        files_sha256=files_sha256(root, ["train"] + ([split] if split else []), classes),
        mean=mean,
        std=std,
        stats_images=n,
    )
    return parts["train"], parts.get(split), info


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
