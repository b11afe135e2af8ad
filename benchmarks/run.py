"""Speed benchmarks: training throughput and inference latency of the built-in models.

    python benchmarks/run.py [--out benchmarks/RESULTS.md]

Measures, on this machine's CPU, for every built-in model:
- training throughput (images/s, batch 256, AdamW step included), NCHW vs channels_last;
- inference latency (median of repeated calls, ms) at batch 1 and 64: eager PyTorch, ONNX Runtime
  fp32 and, for the student, ONNX Runtime static INT8 (QDQ).
Results are written as a markdown table with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluate import onnx_latency, torch_latency  # noqa: E402
from pipeline.onnx_model import export_onnx, ort_session, quantize_int8  # noqa: E402
from pipeline.params import PluginSpec  # noqa: E402
from pipeline.selection import create  # noqa: E402

MODELS = ("lenet5", "resnet8", "mlp")


def train_throughput(name: str, channels_last: bool, batch: int = 256, steps: int = 15) -> float:
    torch.manual_seed(0)
    model = create("models", PluginSpec(name), num_classes=10, in_channels=1)[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = create("models", PluginSpec(name), num_classes=10, in_channels=1)[0].eval()
            onnx_path = export_onnx(model, Path(tmp) / f"{name}.onnx", torch.rand(2, 1, 28, 28), 18)
            session = ort_session(onnx_path, threads)
            row = {
                "model": name,
                "params": sum(p.numel() for p in model.parameters()),
                "train_nchw": train_throughput(name, False),
                "train_cl": train_throughput(name, True),
            }
            for b in (1, 64):
                row[f"torch_b{b}"] = torch_latency(model, b, 20, args.repeats)["median"]
                row[f"onnx_b{b}"] = onnx_latency(session, b, 20, args.repeats)["median"]
            if name == "lenet5":
                calib = (np.random.default_rng(0).random((256, 1, 28, 28)) * 255).astype(np.uint8)
                q = ort_session(quantize_int8(onnx_path, Path(tmp) / "q.onnx", calib), threads)
                for b in (1, 64):
                    row[f"int8_b{b}"] = onnx_latency(q, b, 20, args.repeats)["median"]
            rows.append(row)
            print(row, flush=True)
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmarks",
        "",
        f"Measured with `python benchmarks/run.py` on {os.cpu_count()} CPU cores ({cpu}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{threads} threads, on {time.strftime('%Y-%m-%d')}. Training: images/s at batch 256 with an AdamW step "
        f"(median of 15 steps). Latency: median ms of {args.repeats} calls after 20 warm-up calls; INT8 is "
        "static QDQ quantisation calibrated on random images (speed only; accuracy is in reports/metrics.json). "
        "Absolute times on a shared 2-core machine are noisy: compare within one table.",
        "",
        "| model | parameters | train img/s NCHW | train img/s channels_last | PyTorch b1 ms | ONNX Runtime b1 ms "
        "| INT8 b1 ms | PyTorch b64 ms | ONNX Runtime b64 ms | INT8 b64 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['train_nchw']:,.0f} | {r['train_cl']:,.0f} | {r['torch_b1']:.3f} "
            f"| {r['onnx_b1']:.3f} | {r.get('int8_b1', float('nan')):.3f} | {r['torch_b64']:.2f} | {r['onnx_b64']:.2f} "
            f"| {r.get('int8_b64', float('nan')):.2f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
