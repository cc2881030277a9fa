"""The GHN variants the references train (GHN-2, GHN-1, the MLP baseline, the GHN-3 sizes) and their shapes.

A variant is a choice of message passing (``hypernet``), virtual edges (``ve``), weight
normalisation and layer norm (and, for GHN-3, width, layers and heads, with the reference's
optimiser settings); a data set fixes the number of classes, the image size and the largest
predicted block (``max_shape``). These are facts about the GHNs, so both the trainer
(:mod:`ghninit.training`) and the weight registry (:mod:`ghninit.zoo.registry`) read them here.
"""

from __future__ import annotations

ARCH_KEYS = ("hypernet", "ve", "weight_norm", "layernorm")

PRESETS: dict[str, dict] = {
    "ghn2": dict(hypernet="gatedgnn", ve=True, weight_norm=True, layernorm=True, meta_batch=8),
    "ghn1": dict(hypernet="gatedgnn", ve=False, weight_norm=False, layernorm=False, meta_batch=1),
    "mlp": dict(hypernet="mlp", ve=True, weight_norm=True, layernorm=True, meta_batch=8),
}

# GHN-3 as SamsungSAILMontreal/ghn3's train_ghn_ddp.py trains it: AdamW (lr 4e-4, weight decay 1e-2),
# cosine schedule, meta-batch 8, and the regulariser on predicted parameter norms (weight 3e-5).
# Sizes: the published T/S/L/XL (hid, heads; layers as ghninit.zoo.ghn3_weights pins them: S's layer
# count is not published, 5 is our choice) and a tiny one for tests and quick trials.
GHN3_TRAINING = dict(
    hypernet="graphormer", ve=True, weight_norm=True, layernorm=True, meta_batch=8,
    optimizer="adamw", lr=4e-4, weight_decay=1e-2, schedule="cosine", norm_reg=3e-5,
)  # fmt: skip
GHN3_SIZES: dict[str, dict] = {
    "ghn3-tiny": dict(hid=16, layers=1, heads=4),
    "ghn3-t": dict(hid=64, layers=3, heads=8),
    "ghn3-s": dict(hid=128, layers=5, heads=16),
    "ghn3-l": dict(hid=256, layers=12, heads=16),
    "ghn3-xl": dict(hid=384, layers=24, heads=16),
}
for _name, _size in GHN3_SIZES.items():
    PRESETS[_name] = {**GHN3_TRAINING, **_size}
PRESETS["ghn3"] = PRESETS["ghn3-t"]  # the smallest published GHN-3


def kernel_limit(image_size: int) -> int:
    """The largest predicted kernel S for images of this size: 11 (CIFAR-sized) or 16 (ImageNet-sized), as the references."""
    return 16 if image_size >= 128 else 11


def default_max_shape(variant: str, image_size: int) -> tuple[int, int, int, int]:
    """``max_shape`` of a variant for images of ``image_size``: (64, 64, S, S) for the GHN-2 family, (hid, hid, S, S) for GHN-3."""
    s = kernel_limit(image_size)
    c = PRESETS[variant]["hid"] if PRESETS[variant]["hypernet"] == "graphormer" else 2 * HID
    return (c, c, s, s)


# the paper's shapes: CIFAR-10 (and any other small data set) by default, ImageNet with S = 16
DATASET_SHAPES: dict[str, dict] = {
    "cifar10": dict(num_classes=10, image_size=32, max_shape=(64, 64, 11, 11)),
    "imagenet": dict(num_classes=1000, image_size=224, max_shape=(64, 64, 16, 16)),
}
HID = 32


def ghn2_kwargs(variant: str, dataset: str) -> dict:
    """Constructor arguments of :class:`~ghninit.GHN2` for a variant of :data:`PRESETS` trained on ``dataset``."""
    shapes = DATASET_SHAPES.get(dataset, DATASET_SHAPES["cifar10"])
    arch = {key: PRESETS[variant][key] for key in ARCH_KEYS}
    return dict(
        max_shape=tuple(shapes["max_shape"]),
        num_classes=shapes["num_classes"],
        hypernet=arch["hypernet"],
        decoder="conv",
        weight_norm=arch["weight_norm"],
        ve=arch["ve"],
        layernorm=arch["layernorm"],
        hid=HID,
    )
