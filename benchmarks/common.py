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

from pipeline import layout  # noqa: E402
from pipeline.data import FASHION_CLASSES, Split, load_splits  # noqa: E402
from pipeline.evaluation import accuracy, predict_logits  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.modelio import load_model  # noqa: E402
from pipeline.offline_copies import AugmentedCopies  # noqa: E402
from pipeline.params import LossSpec, Params, TrainParams  # noqa: E402
from pipeline.selection import Selected, Selections, build_augmenters  # noqa: E402
from pipeline.training import Runtime, Trainer  # noqa: E402

NUM_CLASSES = len(FASHION_CLASSES)  # the benchmarks run on Fashion-MNIST: 10 classes of grey 28x28


def pipeline_inputs(params: Params) -> tuple[dict[str, Split], torch.nn.Module]:
    """The prepared splits and the trained teacher (run `dvc repro` first)."""
    splits = load_splits(layout.prepared(params, layout.SOURCE_FILE))
    teacher, _ = load_model(layout.model_dir(params, "teacher"), torch.device("cpu"))
    return splits, teacher


@dataclass
class Trained:
    accuracy: float  # on the test split
    val_accuracy: float  # on the validation split, after the last epoch (what settings are chosen on)
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
    runtime = Runtime.from_params(params.runtime, seed, NUM_CLASSES)
    runtime = Runtime(
        runtime.device, seed, NUM_CLASSES, runtime.channels_last, False, runtime.eval_batch_size
    )
    plugins = Selections.resolve(params)
    model = plugins.model("student.model").build_model(NUM_CLASSES, 1)
    terms = LossSet.build(
        [Selected.resolve(f"losses[{i}]", "losses", s) for i, s in enumerate(losses)], "distill"
    )
    online = cfg.augment and copies is None
    trainer = Trainer(
        "distill",
        model,
        terms,
        cfg,
        runtime,
        augmenters=build_augmenters(plugins.augmenters(), "distill") if online else [],
        teacher=teacher if terms.needs_teacher else None,
        label=label,
        copies=copies,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        result = trainer.fit(splits["train"], splits["val"])
    test = splits["test"]
    acc = accuracy(predict_logits(model, torch.from_numpy(test.x), runtime.device), torch.from_numpy(test.y))
    val_acc = result.history[-1][layout.VAL_ACCURACY]
    return Trained(acc, val_acc, result.seconds, trainer.teacher_passes)
