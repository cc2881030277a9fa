"""Adapting ImageNet-style torchvision classifiers to 32x32 inputs, as the reference does for CIFAR-10.

ResNets and DenseNets get a 3x3, stride-1 first convolution (the centre 3x3 window of the
original kernel) and no first max pool; MobileNetV2/V3 get stride 1 in every convolution of
``features[:5]``. This is what the published CIFAR-10 GHN-2 expects.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _centre_3x3(conv: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)
    kh, kw = conv.kernel_size
    top, left = (kh - 3) // 2, (kw - 3) // 2
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, :, top : top + 3, left : left + 3])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def adapt_to_cifar(model: nn.Module) -> nn.Module:
    """Adapt a torchvision ResNet, DenseNet or MobileNetV2/V3 to 32x32 inputs, in place.

    Raises:
        TypeError: for other model families.
    """
    from torchvision import models

    if isinstance(model, models.ResNet):
        model.conv1 = _centre_3x3(model.conv1)
        model.maxpool = nn.Identity()
    elif isinstance(model, models.DenseNet):
        model.features[0] = _centre_3x3(model.features[0])
        model.features[3] = nn.Identity()
    elif isinstance(model, (models.MobileNetV2, models.MobileNetV3)):
        for module in model.features[:5].modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (1, 1)
    else:
        raise TypeError(
            f"adapt_to_cifar knows ResNet, DenseNet and MobileNetV2/V3, not {type(model).__name__}; "
            "adapt its stem by hand (stride-1 3x3 first conv, no early pooling)"
        )
    return model
