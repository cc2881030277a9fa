"""Tiling/slicing predicted tensors to target shapes, and their normalisation."""

from __future__ import annotations

import math

import torch

from ghninit.write.tensors import normalize, tile


def test_tiling_repeats_channels_cyclically_and_slices_spatial():
    w = torch.arange(64 * 64 * 3 * 3, dtype=torch.float32).view(64, 64, 3, 3)
    out = tile(w, (130, 70, 1, 3))
    assert out.shape == (130, 70, 1, 3)
    assert torch.equal(out[129, 69], w[129 % 64, 69 % 64, :1, :3])
    assert torch.equal(out[:64, :64], w[:, :, :1, :])


def test_small_targets_are_sliced_and_linear_reads_position_zero():
    w = torch.randn(64, 64, 1, 1)
    assert torch.equal(tile(w, (10, 20)), w[:10, :20, 0, 0])
    assert torch.equal(tile(torch.arange(64.0), (100,))[64:], torch.arange(36.0))
    cls = torch.randn(10, 64)
    assert torch.equal(tile(cls, (25, 64))[20:], cls[:5])


def test_kernels_larger_than_the_decoder_repeat_spatially():
    w = torch.randn(64, 64, 11, 11)
    out = tile(w, (64, 64, 13, 13))
    assert torch.equal(out[:, :, 11:, :11], w[:, :, :2, :])


def test_normalisation():
    w = torch.ones(8, 4, 3, 3)
    assert torch.allclose(normalize(w, "weight"), w * math.sqrt(2 / 36))
    depthwise = torch.ones(8, 1, 3, 3)
    assert torch.allclose(normalize(depthwise, "weight"), depthwise * math.sqrt(1 / 9))
    wide = torch.ones(8, 4, 1, 3)
    assert torch.allclose(normalize(wide, "weight"), wide * math.sqrt(1 / 12))
    linear = torch.ones(10, 50)
    assert torch.allclose(normalize(linear, "weight"), linear * math.sqrt(2 / 50))
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(normalize(x, "norm"), 2 * torch.sigmoid(x / 2))
    assert torch.allclose(normalize(x, "bias"), torch.tanh(x / 5))
    pos = torch.randn(1, 8, 14, 14)
    assert torch.equal(normalize(pos, "pos_enc"), pos)


def test_write_tiled_equals_tile():
    from ghninit.write.tensors import write_tiled

    for block_shape, shape in [
        ((64, 64, 3, 3), (130, 70, 3, 3)),
        ((64,), (200,)),
        ((10, 64), (25, 100)),
        ((3, 5), (3, 5)),
    ]:
        block = torch.randn(block_shape)
        dst = torch.empty(shape)
        write_tiled(dst, block)
        assert torch.equal(dst, tile(block, shape))
    dst = torch.zeros(8, 6, 3, 3)[:, :4]  # a non-contiguous destination
    block = torch.randn(3, 4, 3, 3)
    write_tiled(dst, block)
    assert torch.equal(dst, tile(block, (8, 4, 3, 3)))
