"""Data of the fine-tuning benchmarks: the few-shot sampler, CIFAR-10 and Penn-Fudan.

:func:`few_shot_split` draws the training images of a seed; :func:`load_cifar10` reads CIFAR-10
(an ImageFolder tree or torchvision's files) lazily by index, with :func:`augment` and
:func:`normalize`; :class:`PennFudan` reads the pedestrian masks as boxes, split as torchvision's
detection tutorial does (:func:`pennfudan_split`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ghninit.training.data import CIFAR10_CLASSES

from .init import ghninit  # noqa: F401  (importable from a source checkout too)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"




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


@dataclass
class ImageSet:
    """Labelled 32x32 CIFAR-10 images in memory, read by index.

    Attributes:
        images: uint8 ``(N, 3, 32, 32)``, in the folder's class-by-class, file-name order (or
            torchvision's file order).
        labels: one class index per image.
        source: where the images come from.
    """

    images: torch.Tensor
    labels: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """``(len(indices), 3, 32, 32)`` uint8 images."""
        return self.images[list(indices)]


def load_cifar10(data_dir: str | os.PathLike, train: bool, download: bool = False) -> ImageSet:
    """The CIFAR-10 training or test set, decoded by :func:`ghninit.training.data.load_cifar10` (one reader
    for GHN training and fine-tuning; decoded folders are cached).

    ``data_dir`` may hold an ``ImageFolder`` tree (``train/<class>/*``, ``test/<class>/*``, class
    folders named as torchvision's classes) or torchvision's ``cifar-10-batches-py``; with
    ``download=True`` the latter is downloaded there when neither is present.

    Raises:
        FileNotFoundError: naming the folder and the layouts looked for.
        ValueError: when the class folders are not CIFAR-10's or the images are not 32x32.
    """
    root = Path(data_dir)
    folder = root / ("train" if train else "test")
    if folder.is_dir():
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if tuple(classes) != CIFAR10_CLASSES:
            raise ValueError(f"{folder}: class folders {classes} are not CIFAR-10's {list(CIFAR10_CLASSES)}")
        source = str(folder)
    elif download or (root / "cifar-10-batches-py").is_dir():
        source = str(root / "cifar-10-batches-py")
    else:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {root}: expected {folder}/<class>/*.jpg|png or {root}/cifar-10-batches-py; "
            "pass --download to fetch it there"
        )
    data = ghninit.training.data.load_cifar10(root, train, download=download, shuffle=False)
    if tuple(data.images.shape[1:]) != (3, 32, 32):
        raise ValueError(f"{source}: expected 32x32 RGB images, got {tuple(data.images.shape[1:])}")
    return ImageSet(data.images, data.labels.tolist(), source)


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
