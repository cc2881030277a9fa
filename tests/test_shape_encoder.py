"""Shape buckets of the shape encoder."""

from __future__ import annotations

from ghninit.ghn.shape_encoder import ShapeEncoder, channel_values, shape_to_4d, spatial_values


def test_bucket_tables_have_published_sizes():
    assert len(channel_values(1000)) == 391 and len(channel_values(10)) == 391
    assert list(spatial_values(16)) == [1, 3, 5, 7, 9, 11, 13, 14, 15, 16]
    assert list(spatial_values(11)) == [1, 3, 5, 7, 9, 11, 14, 16]


def test_shapes_made_4d():
    assert shape_to_4d((5,)) == (5, 1, 1, 1)
    assert shape_to_4d((5, 6)) == (5, 6, 1, 1)
    assert shape_to_4d((1, 197, 768)) == (1, 768, 14, 14)
    assert shape_to_4d((2, 3, 4)) == (2, 3, 4, 1)


def test_channel_and_spatial_buckets():
    enc = ShapeEncoder(32, 1000, (64, 64, 16, 16))
    channels = list(channel_values(1000))
    spatial = list(spatial_values(16))

    def buckets(shape):
        return enc.bucket_indices([shape])[0].tolist()

    assert buckets((1000, 64, 3, 3)) == [channels.index(1000), channels.index(64), spatial.index(3), spatial.index(3)]
    assert buckets((5, 2, 2, 12))[:3] == [
        channels.index(8),
        channels.index(1),
        spatial.index(3),
    ]  # 4-7 -> 8; 2 -> 1; 2x2 -> 3
    assert buckets((5, 2, 2, 12))[3] == spatial.index(11)  # tie 11/13 -> the smaller
    assert buckets((72, 20000, 40, 13))[:3] == [
        channels.index(64),
        channels.index(8192),
        spatial.index(16),
    ]  # 72: tie 64/80
    assert buckets((4100, 1, 1, 1))[0] == channels.index(4096)
    assert enc.bucket_indices([None])[0].tolist() == [391, 391, 10, 10]  # dummy rows


def test_cifar_ghn_buckets_include_ten_classes():
    enc = ShapeEncoder(32, 10, (64, 64, 11, 11))
    assert enc.embed_channel.num_embeddings == 392 and enc.embed_spatial.num_embeddings == 9
    assert enc.bucket_indices([(10, 64)])[0, 0].item() == list(channel_values(10)).index(10)
