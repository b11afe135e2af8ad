"""Classify images with an exported ONNX student, using only numpy and onnxruntime.

    distillops predict models/onnx/student.onnx shoe.png images.npy [--top 3] [--json]
    python -m pipeline.predict ...          (the same, where distillops is not installed)

``images.npy``: uint8 ``[N, 28, 28]`` or ``[N, 1, 28, 28]`` (0-255), or float32 in [0, 1]. PNG/JPEG
files work too when Pillow is installed. This module imports nothing else from distillops, so it can be
copied next to the ONNX file and run wherever onnxruntime is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

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


def load_images(paths: list[str], with_sources: bool = False) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """The images of ``paths`` as float32 ``[N, 1, 28, 28]`` in [0, 1]; with ``with_sources``, also a
    name per image (the file, and ``file[i]`` for the rows of an array)."""
    arrays = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise SystemExit(f"error: {path} does not exist")
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        else:
            try:
                from PIL import Image
            except ImportError:
                raise SystemExit(
                    "error: reading image files needs Pillow: pip install pillow (or pass a .npy array)"
                ) from None
            a = np.asarray(Image.open(path).convert("L").resize((28, 28)))[None]
        if a.ndim == 2:
            a = a[None]
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4 or a.shape[1:] != (1, 28, 28):
            raise SystemExit(
                f"error: {path}: expected images of shape [N, 28, 28] or [N, 1, 28, 28], got {a.shape}"
            )
        arrays.append(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
    images = np.concatenate(arrays)
    if not with_sources:
        return images
    sources = []
    for p, a in zip(paths, arrays, strict=True):
        sources += [f"{p}[{i}]" for i in range(len(a))] if p.endswith(".npy") else [p]
    return images, sources


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict(model: str, images: np.ndarray) -> np.ndarray:
    """Class probabilities: the model's ``probabilities`` output, or the softmax of its first output."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("error: predicting needs onnxruntime: pip install onnxruntime") from None
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    if "probabilities" in outputs:
        return session.run(["probabilities"], {name: images})[0]
    return softmax(session.run([outputs[0]], {name: images})[0])


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.predict") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="an exported .onnx model")
    parser.add_argument("images", nargs="+", help=".npy arrays or image files")
    parser.add_argument("--top", type=int, default=1, help="how many classes to report per image")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    parser.add_argument(
        "--labels",
        choices=["fashion", "index"],
        default="fashion",
        help="class names: Fashion-MNIST's (students) or the class index (e.g. the digits model)",
    )
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    images, sources = load_images(args.images, with_sources=True)
    probs = predict(args.model, images)
    use_names = args.labels == "fashion" and probs.shape[1] == len(FASHION_CLASSES)
    classes = FASHION_CLASSES if use_names else tuple(map(str, range(probs.shape[1])))
    for i, (row, source) in enumerate(zip(probs, sources, strict=True)):
        top = np.argsort(-row)[: args.top]
        found = [{"class": int(k), "label": classes[k], "probability": round(float(row[k]), 4)} for k in top]
        if args.json:
            print(json.dumps({"index": i, "source": source, "predictions": found}))
        else:
            print(f"{source}: " + ", ".join(f"{p['label']} {p['probability']:.4f}" for p in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
