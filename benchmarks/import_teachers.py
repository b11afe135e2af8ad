"""Distilling teachers the pipeline did not train, on full Fashion-MNIST (issue 23's figures).

Given a finished default pipeline (``--from``: its ``data/prepared`` and ``models/teacher``), this

1. trains an "outside" teacher with plain PyTorch, as another framework would: a small VGG-style CNN on
   RGB 32x32 images normalised with ``(x - mean) / std`` outside the network, exported to ONNX (the
   normalisation is given to distillops in params, as for a model whose file does not say it);
2. distils the default student (grey 28x28) from, for each seed:
   - ``single``: the default teacher taken back as its weights file,
   - ``rgb32``: the RGB 32x32 ONNX teacher alone (another input format than the data's),
   - ``ensemble``: both, their probabilities averaged;
3. writes ``benchmarks/IMPORT_TEACHERS.md``: teacher accuracy, student alone, distilled, gain, mean +- std.

Each run is the real teacher and distill stages (``python -m pipeline.teacher`` / ``pipeline.distill``) in
its own folder, with its own MLflow store.

    python benchmarks/import_teachers.py --from /tmp/full --work /tmp/imports --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data import convert_images, load_splits  # noqa: E402

MEAN, STD = 0.286, 0.353  # the RGB teacher's own normalisation (Fashion-MNIST's statistics, per channel)


def vgg_rgb32() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 16), *block(16, 16), nn.MaxPool2d(2),
        *block(16, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 10),
    )  # fmt: skip


def train_rgb_teacher(prepared: Path, out: Path, epochs: int) -> dict[str, float]:
    """Plain PyTorch training on the prepared splits converted to RGB 32x32; exported to ONNX."""
    torch.manual_seed(0)
    splits = load_splits(prepared / "source.npz")
    rgb = {k: convert_images(np.asarray(splits[k].x), 3, 32, 32) for k in ("train", "val", "test")}
    net = vgg_rgb32()

    def batches(x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x).float() / 255.0 - MEAN) / STD

    steps = epochs * math.ceil(len(rgb["train"]) / 128)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    y = torch.from_numpy(np.asarray(splits["train"].y))
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(y), generator=g).split(128):
            x = batches(rgb["train"][idx.numpy()])
            flip = torch.rand(len(x), generator=g) < 0.5
            x[flip] = x[flip].flip(3)
            opt.zero_grad()
            F.cross_entropy(net(x), y[idx]).backward()
            opt.step()
            sched.step()
        print(
            f"rgb32 teacher epoch {epoch + 1}/{epochs}: val {accuracy(net, rgb['val'], splits['val'].y):.4f}",
            flush=True,
        )
    result = {
        "val_accuracy": accuracy(net, rgb["val"], splits["val"].y),
        "test_accuracy": accuracy(net, rgb["test"], splits["test"].y),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    net.eval()
    torch.onnx.export(
        net, (torch.zeros(2, 3, 32, 32),), str(out), input_names=["image"], output_names=["scores"],
        dynamic_axes={"image": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    return result


@torch.no_grad()
def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    pred = torch.cat(
        [
            net((torch.from_numpy(x[i : i + 512]).float() / 255.0 - MEAN) / STD).argmax(1)
            for i in range(0, len(x), 512)
        ]
    )
    return float((pred.numpy() == np.asarray(y)).mean())


def run_config(base: Path, work: Path, name: str, source: object, seed: int) -> dict[str, float]:
    """The teacher stage (importing ``source``) and the distill stage at ``seed``, in their own folder."""
    d = work / f"{name}-seed{seed}"
    result_file = d / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for item in ("pipeline", "plugins", "dvc.yaml", "pyproject.toml"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / item)
    shutil.copytree(work / "teachers", d / "teachers")
    (d / "data").mkdir()
    shutil.copytree(base / "data/prepared", d / "data/prepared")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["seed"] = seed
    params["teacher"]["source"] = source
    params["runtime"]["progress"] = False
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(d), "MLFLOW_TRACKING_URI": f"sqlite:///{d / 'mlflow.db'}"}
    times = {}
    for stage in ("teacher", "distill"):
        t0 = time.perf_counter()
        with (d / f"{stage}.log").open("w") as log:
            subprocess.run(
                [sys.executable, "-m", f"pipeline.{stage}"],
                cwd=d,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )
        times[stage] = round(time.perf_counter() - t0, 1)
    teacher = json.loads((d / "models/teacher/model.json").read_text())
    gain = json.loads((d / "models/student/gain.json").read_text())
    result = {
        "teacher": teacher["test_accuracy"],
        "alone": gain["student_alone_accuracy"],
        "distilled": gain["student_accuracy"],
        "gain": gain["gain"],
        "teacher_seconds": times["teacher"],
        "distill_seconds": times["distill"],
    }
    result_file.write_text(json.dumps(result, indent=1))
    print(f"{name} seed {seed}: {result}", flush=True)
    return result


def mean_std(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} +- {s:.{digits}f}"


def seeds_gain(rows: list[dict[str, float]]) -> str:
    return ", ".join(f"{r['gain'] * 100:+.2f}" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="base", type=Path, required=True, help="a finished default pipeline")
    ap.add_argument("--work", type=Path, default=Path("/tmp/imports"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rgb-epochs", type=int, default=10)
    ap.add_argument("--rgb-seeds", type=int, nargs="+", default=[0], help="seeds of the rgb32 config")
    ap.add_argument("--configs", nargs="+", default=["single", "rgb32", "ensemble"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/IMPORT_TEACHERS.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    teachers = args.work / "teachers"
    teachers.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.base / "models/teacher/model.safetensors", teachers / "lenet.safetensors")
    rgb_file, rgb_info = teachers / "vgg_rgb32.onnx", args.work / "rgb32.json"
    if not rgb_info.exists():
        rgb_info.write_text(
            json.dumps(train_rgb_teacher(args.base / "data/prepared", rgb_file, args.rgb_epochs))
        )
    lenet = {
        "weights": "teachers/lenet.safetensors",
        "model": {"name": "lenet5", "width": 4, "hidden": [256]},
    }
    rgb = {"onnx": "teachers/vgg_rgb32.onnx", "input": {"mean": [MEAN] * 3, "std": [STD] * 3}}
    configs = {"single": lenet, "rgb32": rgb, "ensemble": [lenet, rgb]}
    results = {
        name: [
            run_config(args.base, args.work, name, configs[name], s)
            for s in (args.rgb_seeds if name == "rgb32" else args.seeds)
        ]
        for name in args.configs
    }
    lines = [
        "# Imported teachers on full Fashion-MNIST",
        "",
        f"`python benchmarks/import_teachers.py --from <default pipeline> --seeds {' '.join(map(str, args.seeds))}`, "
        f"measured {time.strftime('%Y-%m-%d')} on a 2-core CPU machine (no GPU), torch {torch.__version__}. "
        "The teachers are trained once (seed 0); the seed varies the students. Test split; "
        "mean +- std over the seeds; gain in points.",
        "",
        f"The RGB 32x32 teacher (plain PyTorch, {args.rgb_epochs} epochs, ONNX, normalised outside the network): "
        f"{json.loads(rgb_info.read_text())}.",
        "",
        "| teacher | teacher accuracy | student alone | distilled | gain (pt) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        lines.append(
            f"| {name} | {rows[0]['teacher']:.4f} | {mean_std([r['alone'] for r in rows])} | "
            f"{mean_std([r['distilled'] for r in rows])} | {mean_std([r['gain'] for r in rows], 100, 2)} "
            f"({seeds_gain(rows)}) | {len(rows)} |"
        )
    lines += ["", "Stage times (s, teacher import / distill), per run: " + "; ".join(
        f"{n} {r['teacher_seconds']:.0f}/{r['distill_seconds']:.0f}" for n, rows in results.items() for r in rows
    ), ""]  # fmt: skip
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
