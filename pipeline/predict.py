"""Classify images with an exported ONNX student, using only numpy and onnxruntime.

    python -m pipeline.predict models/onnx/student.onnx images.npy [--top 3]

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


def load_images(paths: list[str]) -> np.ndarray:
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
    return np.concatenate(arrays)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict(model: str, images: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("error: predicting needs onnxruntime: pip install onnxruntime") from None
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return softmax(session.run(None, {name: images})[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="an exported .onnx model")
    parser.add_argument("images", nargs="+", help=".npy arrays or image files")
    parser.add_argument("--top", type=int, default=1, help="how many classes to report per image")
    parser.add_argument(
        "--labels",
        choices=["fashion", "index"],
        default="fashion",
        help="class names: Fashion-MNIST's (students) or the class index (e.g. the digits model)",
    )
    args = parser.parse_args(argv)
    probs = predict(args.model, load_images(args.images))
    use_names = args.labels == "fashion" and probs.shape[1] == len(FASHION_CLASSES)
    classes = FASHION_CLASSES if use_names else tuple(map(str, range(probs.shape[1])))
    for i, row in enumerate(probs):
        top = np.argsort(-row)[: args.top]
        print(
            json.dumps(
                {
                    "index": i,
                    "predictions": [
                        {"class": int(k), "label": classes[k], "probability": round(float(row[k]), 4)}
                        for k in top
                    ],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
