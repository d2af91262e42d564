"""IDX and CIFAR-10 binary readers against generated files (raw and gzip)."""

import gzip

import numpy as np
import pytest

from actlab.data.idx import (
    check_idx_pair,
    parse_idx,
    read_cifar_batch,
    read_idx,
    read_idx_pair,
    write_cifar_batch,
    write_idx,
)
from actlab.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((5, 3, 4)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == (5, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian_lecun_layout(tmp_path):
    # The MNIST label file header: 0x00000801, then the count as big-endian uint32.
    path = write_idx(tmp_path / "labels", np.array([7, 2, 1], dtype=np.uint8))
    data = path.read_bytes()
    assert data[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 3])
    assert data[8:] == bytes([7, 2, 1])


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    raw = write_idx(tmp_path / "x", array).read_bytes()
    (tmp_path / "compressed-without-suffix").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "compressed-without-suffix"), array)


def test_wrong_magic_number_names_the_file(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match=r"images: wrong magic number 0x12340803"):
        read_idx(path)


def test_unknown_dtype_code_is_a_wrong_magic(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="wrong magic number"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data_is_refused(tmp_path, suffix):
    good = write_idx(tmp_path / "full", np.zeros((10, 28, 28), dtype=np.uint8)).read_bytes()
    cut = good[: len(good) - 100]
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(cut) if suffix else cut)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated IDX file"):
        read_idx(path)


def test_truncated_gzip_stream_is_refused(tmp_path):
    compressed = gzip.compress(
        write_idx(tmp_path / "full", np.ones((50, 28, 28), dtype=np.uint8)).read_bytes()
    )
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"cut.gz: truncated gzip"):
        read_idx(path)


def test_truncated_header_is_refused(tmp_path):
    path = tmp_path / "h"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated IDX file"):
        read_idx(path)


def test_trailing_bytes_are_refused():
    data = bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3])
    with pytest.raises(DataError, match="1 trailing bytes"):
        parse_idx(data, "labels")


def test_pair_size_mismatch_names_both_files(tmp_path):
    images = write_idx(tmp_path / "imgs", np.zeros((4, 2, 2), dtype=np.uint8))
    labels = write_idx(tmp_path / "lbls", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match=r"imgs: 4 images but lbls has 3 labels"):
        read_idx_pair(images, labels)


def test_pair_returns_int64_labels(tmp_path):
    images = write_idx(tmp_path / "imgs", np.zeros((2, 2, 2), dtype=np.uint8))
    labels = write_idx(tmp_path / "lbls", np.array([3, 9], dtype=np.uint8))
    _, y = read_idx_pair(images, labels)
    assert y.dtype == np.int64
    assert y.tolist() == [3, 9]


def test_pair_refuses_swapped_files():
    with pytest.raises(DataError, match="expected uint8 images of 3 dimensions"):
        check_idx_pair(np.zeros(3, np.uint8), np.zeros(3, np.uint8), "labels-as-images", "l")


def test_cifar_round_trip_keeps_channel_planes(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 5])
    path = write_cifar_batch(tmp_path / "data_batch_1.bin", images, labels)
    raw = path.read_bytes()
    # Record layout: label byte, then the red plane row-major, then green, then blue.
    assert raw[0] == 0
    assert raw[1:1025] == images[0, 0].tobytes()
    assert raw[1025:2049] == images[0, 1].tobytes()
    x, y = read_cifar_batch(path)
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == labels.tolist()
    assert y.dtype == np.int64


def test_cifar_truncated_batch_is_refused(tmp_path):
    path = write_cifar_batch(
        tmp_path / "test_batch.bin", np.zeros((2, 3, 32, 32), np.uint8), np.array([1, 2])
    )
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(
        DataError, match=r"test_batch.bin: .* not a whole number of CIFAR-10 records"
    ):
        read_cifar_batch(path)


def test_cifar_label_out_of_range_is_refused(tmp_path):
    path = write_cifar_batch(tmp_path / "b.bin", np.zeros((1, 3, 32, 32), np.uint8), np.array([10]))
    with pytest.raises(DataError, match="label 10 out of range"):
        read_cifar_batch(path)
