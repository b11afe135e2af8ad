"""What the distillation benchmarks share: the pipeline's own teacher, data and trainer."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import NUM_CLASSES, Split, load_splits  # noqa: E402
from pipeline.modelio import build_model, load_model  # noqa: E402
from pipeline.offline_copies import AugmentedCopies  # noqa: E402
from pipeline.params import LossSpec, Params, TrainParams  # noqa: E402
from pipeline.prepare import SOURCE_FILE  # noqa: E402
from pipeline.protocols import requires_teacher  # noqa: E402
from pipeline.teacher import out_dir as teacher_dir  # noqa: E402
from pipeline.training import (  # noqa: E402
    Trainer,
    accuracy,
    build_augmenters,
    build_losses,
    predict_logits,
    setup_runtime,
)


def pipeline_inputs(params: Params) -> tuple[dict[str, Split], torch.nn.Module]:
    """The prepared splits and the trained teacher (run `dvc repro` first)."""
    splits = load_splits(Path(params.paths.prepared) / SOURCE_FILE)
    teacher, _ = load_model(teacher_dir(params), torch.device("cpu"))
    return splits, teacher


@dataclass
class Trained:
    accuracy: float  # on the test split
    seconds: float  # Trainer.fit's own training time
    teacher_passes: int  # full teacher passes over a training view (cached logits)


def train_student(
    params: Params,
    cfg: TrainParams,
    losses: Sequence[LossSpec],
    seed: int,
    splits: dict[str, Split],
    teacher: torch.nn.Module | None,
    label: str,
    copies: AugmentedCopies | None = None,
) -> Trained:
    """Train the params' student with ``losses`` (and the teacher where a loss needs it), augmented
    online with ``augment.ops`` when ``cfg.augment``, or on the offline ``copies`` when given."""
    device = setup_runtime(params.runtime, seed)
    model, _ = build_model(params.student.model, NUM_CLASSES, 1)
    terms = build_losses(losses, "distill")
    online = cfg.augment and copies is None
    trainer = Trainer(
        "distill",
        model,
        terms,
        cfg,
        device,
        seed,
        NUM_CLASSES,
        build_augmenters(params.augment.ops, "distill") if online else [],
        teacher=teacher if any(requires_teacher(t.obj) for t in terms) else None,
        progress=False,
        channels_last=params.runtime.channels_last,
        run_label=label,
        copies=copies,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        result = trainer.fit(splits["train"], splits["val"])
    test = splits["test"]
    acc = accuracy(predict_logits(model, torch.from_numpy(test.x), device), torch.from_numpy(test.y))
    return Trained(acc, result.seconds, trainer.teacher_passes)
