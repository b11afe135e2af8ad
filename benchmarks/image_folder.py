"""How long `prepare` takes to decode an image folder, per 10,000 images, and a folder to try the
pipeline on RGB images.

    python benchmarks/image_folder.py --images 10000 --size 32 --folder /tmp/fashion-rgb \
        [--out benchmarks/IMAGE_FOLDER.md]

Writes ``--images`` Fashion-MNIST training images (an equal share per class, class folders named by the
garment) as RGB PNG files of ``--size`` x ``--size``, each garment tinted with a random colour (so the
colour says nothing about the class), every tenth one saved as a 2x larger JPEG so that prepare has
images to resize. Then times the ``image_folder`` dataset plugin (the part of `prepare` that decodes,
converts and resizes every file into one uint8 array) on that folder, twice, and the statistics
prepare computes from it. The folder is kept for `dvc repro` with
``data.dataset: {name: image_folder, root: FOLDER, image_size: SIZE, channels: 3}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import FASHION_CLASSES, DataFormat, load_fashion_mnist  # noqa: E402
from plugins.datasets import image_folder  # noqa: E402


def write_folder(folder: Path, images: int, size: int, seed: int = 0) -> int:
    """The tinted Fashion-MNIST images as files; how many were written."""
    from PIL import Image

    train, _, _ = load_fashion_mnist(Path("data/raw"))
    rng = np.random.default_rng(seed)
    per_class = images // len(FASHION_CLASSES)
    written = 0
    for label, name in enumerate(FASHION_CLASSES):
        out = folder / name.replace("/", "-")
        out.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(train.y == label)[:per_class]):
            grey = train.x[i, 0].astype(np.float32) / 255.0
            colour = rng.uniform(0.3, 1.0, 3)
            rgb = (grey[..., None] * colour * 255).round().astype(np.uint8)
            img = Image.fromarray(rgb, "RGB")
            if k % 10 == 0:
                img.resize((2 * size, 2 * size), Image.BILINEAR).save(out / f"{k}.jpg", quality=95)
            else:
                img.resize((size, size), Image.BILINEAR).save(out / f"{k}.png")
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fashion-rgb"))
    parser.add_argument("--out", default=str(Path(__file__).with_name("IMAGE_FOLDER.md")))
    args = parser.parse_args()
    if not args.folder.exists():
        t0 = time.perf_counter()
        n = write_folder(args.folder, args.images, args.size)
        print(f"wrote {n} files in {time.perf_counter() - t0:.1f} s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    rows = []
    for attempt in (1, 2):  # two reads, both after writing (so from the page cache, as a warm disk)
        t0 = time.perf_counter()
        found = image_folder(str(args.folder), image_size=args.size, channels=3)
        seconds = time.perf_counter() - t0
        x, y = found.splits["train"]
        t1 = time.perf_counter()
        fmt = DataFormat.of(x, found.classes)
        stats_s = time.perf_counter() - t1
        rows.append((attempt, len(x), seconds, stats_s, found.info))
        print(f"read {attempt}: {len(x)} images in {seconds:.1f} s; statistics {stats_s:.2f} s; {fmt}")
    lines = [
        "# Decoding an image folder (prepare)",
        "",
        f"`python benchmarks/image_folder.py --images {args.images} --size {args.size}` on "
        f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        "sharing the machine with other runs. The folder: Fashion-MNIST training images as RGB PNG files "
        f"of {args.size}x{args.size}, each tinted a random colour, every tenth a {2 * args.size}x{2 * args.size} "
        "JPEG. Timed: the `image_folder` plugin (list, decode, convert, resize into one uint8 array, "
        "one process), then the per-channel statistics prepare computes. Both reads come after the "
        "files were written, so they are read from the page cache, not a cold disk.",
        "",
        "| read | images | decode s | per 10,000 images s | statistics s | converted | resized |",
        "|---|---|---|---|---|---|---|",
    ]
    for attempt, n, seconds, stats_s, info in rows:
        lines.append(
            f"| {attempt} | {n} | {seconds:.1f} | "
            f"{seconds / n * 10000:.1f} | {stats_s:.2f} | {info['images_converted']} | {info['images_resized']} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
