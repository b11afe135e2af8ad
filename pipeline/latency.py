"""Batch latency of ONNX models, timed in a process of its own.

``evaluate`` runs this module as a subprocess: a process that has just run PyTorch keeps PyTorch's
threads around, and on a small machine they compete with ONNX Runtime's (batch-1 latency was seen to
double). A serving process has no PyTorch in it, so neither has this one: it imports numpy and
onnxruntime only.

    python -m pipeline.latency '{"models": {"student": "models/onnx/student.onnx"}, "batches": [1, 64],
                                 "warmup": 20, "repeats": 200, "threads": 2}'

prints ``{"student": {"1": {"median": ms, "p95": ms}, "64": {...}}}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def time_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, float]:
    """Median and p95 milliseconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    samples.sort()
    return {
        "median": statistics.median(samples),
        "p95": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
    }


def measure(path: str, batches: list[int], warmup: int, repeats: int, threads: int | None) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    output = session.get_outputs()[0].name
    out = {}
    for b in batches:
        x = np.random.default_rng(0).random((b, *inp.shape[1:]), dtype=np.float32)
        out[str(b)] = time_ms(lambda x=x: session.run([output], {inp.name: x}), warmup, repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    result = {
        name: measure(path, spec["batches"], spec["warmup"], spec["repeats"], spec.get("threads"))
        for name, path in spec["models"].items()
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
