"""What every stage's ``main()`` shares: argument parsing, params loading, early validation of every
plugin selection (so a typo fails in seconds, not after an hour of training), and turning errors into
clear messages and exit codes."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline import interrupts, offline_copies
from pipeline.atomic import write_text
from pipeline.data import IN_CHANNELS, NUM_CLASSES, Split
from pipeline.dvc_restore import restore_previous
from pipeline.errors import DistillopsError
from pipeline.modelio import LOSS_WEIGHTS, META, WEIGHTS, save_model, save_weights
from pipeline.offline_copies import AugmentedCopies
from pipeline.params import Params, PluginSpec, TrainParams, load_params
from pipeline.registry import PluginInfo, resolve
from pipeline.tracking import Tracker
from pipeline.training import (
    LossTerm,
    Plugin,
    Trainer,
    accuracy,
    build_augmenters,
    history_csv,
    predict_logits,
)

HISTORY = "history.csv"

EXIT_USER_ERROR = 2


def validate_plugins(params: Params) -> None:
    """Resolve every plugin the pipeline selects: names exist, modules import, keywords are accepted."""
    for spec in params.augment.ops:
        resolve("augmenters", spec)
    for spec in (params.teacher.model, params.student.model):
        resolve("models", spec)
    for spec in (
        *params.teacher.losses,
        *params.distill.losses,
        *params.distill.baseline_losses,
        *params.transfer.losses,
    ):
        resolve("losses", spec)


def main(stage: str, run: Callable[[Params, Path], object], argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline.{stage}", description=f"distillops stage '{stage}'"
    )
    parser.add_argument(
        "--params", default="params.yaml", type=Path, help="params file (default: params.yaml)"
    )
    args = parser.parse_args(argv)
    try:
        with interrupts.installed():
            params = load_params(args.params)
            validate_plugins(params)
            run(params, args.params)
    except DistillopsError as exc:
        _exit(stage, f"error: stage '{stage}': {exc}", EXIT_USER_ERROR)
    except interrupts.StageInterrupted as exc:
        _exit(
            stage,
            f"stage '{stage}' interrupted ({exc}); rerun to resume from the last checkpoint",
            exc.exit_code,
        )
    except Exception:
        traceback.print_exc()
        _exit(stage, f"error: stage '{stage}' failed with an unexpected error (traceback above)", 1)


def _exit(stage: str, message: str, code: int) -> None:
    """Report a failed stage; under DVC, first put back the outputs DVC removed before running it."""
    print(message, file=sys.stderr)
    restored, missing = restore_previous(stage)
    if restored:
        print(
            f"stage '{stage}': its previous outputs are back in place ({', '.join(restored)}), "
            f"rebuilt from the DVC cache as dvc.lock records them; dvc.lock is unchanged",
            file=sys.stderr,
        )
    if missing:
        print(
            f"stage '{stage}': could not restore {', '.join(missing)} (not in the DVC cache); "
            f"`dvc pull` or rerun the stage",
            file=sys.stderr,
        )
    sys.exit(code)


@dataclass
class Augmentation:
    """What a training stage augments with: ``online`` augmenters for the trainer, or the offline
    ``copies`` prepare materialised; ``plugins`` are the augmenters either way (for the run's tags)."""

    online: list[Plugin]
    copies: AugmentedCopies | None
    plugins: list[Plugin]


def augmentation(params: Params, enabled: bool, stage: str, train: Split | None = None) -> Augmentation:
    """``train`` is the split the offline copies were made from; pass None where copies do not apply
    (the transfer stage trains on another dataset, so it always augments online)."""
    if not enabled:
        return Augmentation([], None, [])
    plugins = build_augmenters(params.augment.ops, stage)
    if params.augment.mode == "offline" and train is not None:
        return Augmentation([], offline_copies.load(Path(params.paths.augmented), len(train)), plugins)
    return Augmentation(plugins, None, plugins)


@dataclass
class Fitted:
    model: nn.Module
    history: list[dict[str, float]]
    test_accuracy: float
    seconds: float


def checkpoint_path(params: Params, name: str) -> Path:
    return Path(params.paths.checkpoints) / f"{name}.pt"


def make_trainer(
    params: Params,
    stage: str,
    name: str,
    model: nn.Module,
    losses: list[LossTerm],
    cfg: TrainParams,
    augs: list[Plugin],
    device: torch.device,
    label: str = "",
    teacher: nn.Module | None = None,
    lr_scale: Callable[[str], float] | None = None,
    copies: AugmentedCopies | None = None,
) -> Trainer:
    """A Trainer with the settings every stage shares (seed, classes, checkpoint, runtime switches)."""
    return Trainer(
        stage,
        model,
        losses,
        cfg,
        device,
        params.seed,
        NUM_CLASSES,
        augs,
        teacher=teacher,
        checkpoint=checkpoint_path(params, name),
        progress=params.runtime.progress,
        channels_last=params.runtime.channels_last,
        run_label=label,
        lr_scale=lr_scale,
        copies=copies,
    )


def fit_variant(
    tracker: Tracker,
    variant: str,
    tags: dict[str, str],
    trainer: Trainer,
    train: Split,
    splits: dict[str, Split],
    out_dir: Path,
    spec: PluginSpec,
    info: PluginInfo,
) -> Fitted:
    """Train one of several models of a stage in its own nested run (metrics also on the stage run)."""
    with tracker.variant(variant, tags) as vtracker:
        return fit_and_save(
            variant,
            trainer,
            train,
            splits["val"],
            splits["test"],
            out_dir,
            spec,
            info,
            [tracker, vtracker],
            prefix=f"{variant}.",
        )


def fit_and_save(
    name: str,
    trainer: Trainer,
    train: Split,
    val: Split,
    test: Split,
    out_dir: Path,
    spec: PluginSpec,
    info: PluginInfo,
    trackers: list[Tracker],
    prefix: str = "",
) -> Fitted:
    """Train, test, save (weights, sidecar, history) and log to every tracker given.

    ``trackers[0]`` gets metrics with ``prefix``; the others (a variant run) get them bare.
    """

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        for i, tracker in enumerate(trackers):
            tracker.log_metrics({f"{prefix if i == 0 else ''}{k}": v for k, v in metrics.items()}, step=epoch)

    trainer.on_epoch = on_epoch
    result = trainer.fit(train, val)
    test_logits = predict_logits(trainer.model, torch.from_numpy(test.x), trainer.device)
    test_acc = accuracy(test_logits, torch.from_numpy(test.y))
    save_model(
        out_dir,
        trainer.model,
        spec,
        trainer.num_classes,
        IN_CHANNELS,
        info,
        {
            "test_accuracy": test_acc,
            "train_seconds": round(result.seconds, 2),
            "epochs": trainer.cfg.epochs,
            "resumed_from_epoch": result.resumed_from,
        },
    )
    write_text(out_dir / HISTORY, history_csv(result.history))
    saved = [WEIGHTS, META, HISTORY]
    if trainer.loss_modules.state_dict():
        save_weights(out_dir / LOSS_WEIGHTS, trainer.loss_modules)
        saved.append(LOSS_WEIGHTS)
    for i, tracker in enumerate(trackers):
        tracker.log_metrics(
            {
                f"{prefix if i == 0 else ''}test_accuracy": test_acc,
                f"{prefix if i == 0 else ''}train_seconds": result.seconds,
            }
        )
        for file in saved:
            tracker.log_artifact(out_dir / file, name)
    if trainer.checkpoint is not None:
        trainer.checkpoint.unlink(missing_ok=True)
    print(f"[{trainer.stage}] {name}: test accuracy {test_acc:.4f} ({result.seconds:.0f} s training)")
    return Fitted(trainer.model, result.history, test_acc, result.seconds)
