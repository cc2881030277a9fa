"""The GHN variants the reference trains (GHN-2, GHN-1, the MLP baseline) and their per-data-set shapes.

A variant is a choice of message passing (``hypernet``), virtual edges (``ve``), weight
normalisation and layer norm; a data set fixes the number of classes, the image size and the
largest predicted block (``max_shape``). These are facts about the GHNs, so both the trainer
(:mod:`ghninit.training`) and the weight registry (:mod:`ghninit.zoo.registry`) read them here.
"""

from __future__ import annotations

ARCH_KEYS = ("hypernet", "ve", "weight_norm", "layernorm")

PRESETS: dict[str, dict] = {
    "ghn2": dict(hypernet="gatedgnn", ve=True, weight_norm=True, layernorm=True, meta_batch=8),
    "ghn1": dict(hypernet="gatedgnn", ve=False, weight_norm=False, layernorm=False, meta_batch=1),
    "mlp": dict(hypernet="mlp", ve=True, weight_norm=True, layernorm=True, meta_batch=8),
}

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
