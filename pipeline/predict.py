"""Classify images with an exported ONNX student, using only numpy and onnxruntime.

    distillops predict models/onnx/student.onnx shoe.png images.npy [--top 3] [--json]
    python -m pipeline.predict ...          (the same, where distillops is not installed)

The input size and the class names come from the model file (its input shape and its
``distillops.classes`` metadata). Image files (PNG, JPEG, ... of any size and mode; Pillow) are converted
to the model's channels and size; ``.npy`` arrays must have its shape (uint8 0-255 or float32 in [0, 1];
``[N, H, W]`` for grey). This module imports nothing else from distillops (numpy, onnxruntime, Pillow
only), so it can be copied next to the ONNX file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CLASSES_KEY = "distillops.classes"  # the class names in the model's metadata (pipeline.onnx_model)


class Model:
    """An exported model: its ONNX Runtime session, input shape ``(C, H, W)`` and class names (from the
    model's metadata; the class numbers when it has none)."""

    def __init__(self, path: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SystemExit("error: predicting needs onnxruntime: pip install onnxruntime") from None
        if not Path(path).is_file():
            raise SystemExit(f"error: {path} does not exist")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape  # [batch, C, H, W]
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise SystemExit(
                f"error: {path}: expected an image model with input [batch, C, H, W], got {shape}"
            )
        self.shape: tuple[int, int, int] = tuple(shape[1:])
        names = self.session.get_modelmeta().custom_metadata_map.get(CLASSES_KEY)
        self.classes: tuple[str, ...] | None = tuple(json.loads(names)) if names else None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities: the model's ``probabilities`` output, or the softmax of its first output."""
        name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if "probabilities" in outputs:
            return self.session.run(["probabilities"], {name: images})[0]
        return softmax(self.session.run([outputs[0]], {name: images})[0])


def load_images(
    paths: list[str], shape: tuple[int, int, int] = (1, 28, 28), with_sources: bool = False
) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """The images of ``paths`` as float32 ``[N, C, H, W]`` in [0, 1] for a model whose input is
    ``shape``: image files of any size and mode are converted (grey or RGB) and resized; ``.npy`` arrays
    must already have the shape (``[N, H, W]`` for one channel). With ``with_sources``, also a name per
    image (the file, and ``file[i]`` for the rows of an array)."""
    channels, height, width = shape
    arrays = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise SystemExit(f"error: {path} does not exist")
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
            if a.ndim == 2:
                a = a[None]
            if a.ndim == 3 and channels == 1:
                a = a[:, None]
        else:
            try:
                from PIL import Image
            except ImportError:
                raise SystemExit(
                    "error: reading image files needs Pillow: pip install pillow (or pass a .npy array)"
                ) from None
            try:
                with Image.open(path) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
                    a = np.asarray(img)
            except OSError as exc:
                raise SystemExit(f"error: {path} cannot be read as an image ({exc})") from None
            a = a[None, None] if channels == 1 else a.transpose(2, 0, 1)[None]
        if a.ndim != 4 or a.shape[1:] != shape:
            raise SystemExit(
                f"error: {path}: the model takes images of {list(shape)} ([N, C, H, W]), got {list(a.shape)}"
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
    """Class probabilities of ``images`` (already in the model's input format)."""
    return Model(model).probabilities(images)


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
        choices=["model", "index"],
        default="model",
        help="class names: those stored in the model file (default), or the class numbers",
    )
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    model = Model(args.model)
    images, sources = load_images(args.images, model.shape, with_sources=True)
    probs = model.probabilities(images)
    use_names = args.labels == "model" and model.classes is not None and len(model.classes) == probs.shape[1]
    classes = model.classes if use_names else tuple(map(str, range(probs.shape[1])))
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
