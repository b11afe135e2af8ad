"""Train "these variants of one model" and keep each: the teacher stage's one model, distill's student
with and without the teacher, transfer's copied and from-scratch students.

Every variant of a stage shares the architecture, data, augmentation, optimiser settings and seed (the
model is re-seeded before it is built, so all start from the same weights unless ``Variant.init`` copies
others in); only its losses, its teacher and its initialisation differ. Each is trained by the one
:class:`~pipeline.training.Trainer`, tested, saved to its ``paths.<name>`` folder, and logged: to the
stage's MLflow run, and, when a stage trains several, also to a nested run per variant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import datasets, layout
from pipeline.atomic import write_text
from pipeline.data import DataFormat, Split, load_splits, take
from pipeline.errors import ParamsError
from pipeline.evaluation import accuracy
from pipeline.loss_set import LossSet
from pipeline.modelio import save_model, save_weights
from pipeline.offline_copies import AugmentedCopies, load
from pipeline.params import InitParams, Params, TrainParams, WarmStart
from pipeline.protocols import teacher_taps
from pipeline.selection import Plugin, Selected, Selections, plugin_tags
from pipeline.stage_outputs import history_csv
from pipeline.tracking import Tracker
from pipeline.training import Runtime, Trainer, TrainResult
from pipeline.weights import apply_init


@dataclass
class Augmentation:
    """What a stage augments with: ``online`` augmenters for the trainer, or the offline ``copies``
    prepare materialised; ``plugins`` are the augmenters either way (for the run's tags)."""

    online: list[Plugin] = field(default_factory=list)
    copies: AugmentedCopies | None = None
    plugins: list[Plugin] = field(default_factory=list)

    @classmethod
    def for_stage(
        cls, params: Params, selected: Sequence[Selected], enabled: bool, stage: str, train: Split
    ) -> Augmentation:
        """A stage on the source task: ``augment.mode: offline`` uses the copies prepare made of
        ``train`` (the split they were made from, to check they match), online the augmenters."""
        if enabled and params.augment.mode == "offline":
            plugins = [sel.build(stage) for sel in selected]
            return cls([], load(Path(params.paths.augmented), len(train)), plugins)
        return cls.online_only(selected, enabled, stage)

    @classmethod
    def online_only(cls, selected: Sequence[Selected], enabled: bool, stage: str) -> Augmentation:
        """A stage on another dataset than the one the offline copies were made from (transfer): the
        augmenters run online whatever ``augment.mode`` says."""
        if not enabled:
            return cls()
        plugins = [sel.build(stage) for sel in selected]
        return cls(plugins, None, plugins)


@dataclass
class Variant:
    name: str  # the model's name: its output folder is paths.<name>
    losses: LossSet
    teacher: nn.Module | None = None
    # prepares the freshly built model (e.g. copies weights in); may return a learning-rate scale per
    # parameter name
    init: Callable[[nn.Module], Callable[[str], float] | None] | None = None
    # freezes or unfreezes layers at the start of each epoch (Trainer.before_epoch)
    before_epoch: Callable[[nn.Module, int], None] | None = None
    # the variant's own training set (e.g. a teacher-scored transfer set); None: the stage's split
    train: Split | None = None
    # what else its sidecar (model.json) records about how it was trained
    meta: dict[str, Any] = field(default_factory=dict)
    # another architecture than the stage's (e.g. the teacher's, adapted in the transfer stage)
    model: Selected | None = None
    # where it is saved; None: its ``paths.<name>`` folder
    out: Path | None = None
    # its own number of epochs; None: the stage's
    epochs: int | None = None

    def epochs_of(self, cfg: TrainParams) -> int:
        return self.epochs if self.epochs is not None else cfg.epochs


def split_digest(split: Split) -> str:
    """A short digest of a split's images and labels (the same data gives the same digest)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(split.x).data)
    h.update(np.ascontiguousarray(split.y).data)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class VariantLog:
    """Where one variant's metrics go and what its training is called, decided once per variant.

    ``trackers[0]`` is the stage's run: it gets the metrics with ``prefix``; a variant with its own run
    (``trackers[1]``, nested under the stage's) gets them bare."""

    trackers: tuple[Tracker, ...]
    prefix: str  # the stage run's metric prefix ("" when the variant has no run of its own)
    checkpoint: str  # names its checkpoint file
    label: str  # names it in progress lines ("" when it is the stage's only model)

    @classmethod
    def of(cls, stage: str, name: str, stage_run: Tracker, own_run: Tracker | None) -> VariantLog:
        if own_run is None:
            return cls((stage_run,), "", name, "")
        return cls((stage_run, own_run), f"{name}.", f"{stage}-{name}", name)

    @property
    def own(self) -> Tracker:
        """The run that describes this model alone: its own run, or the stage's."""
        return self.trackers[-1]

    def __call__(self, metrics: dict[str, float], step: int | None = None) -> None:
        for i, tracker in enumerate(self.trackers):
            tracker.log_metrics(
                {f"{self.prefix if i == 0 else ''}{k}": v for k, v in metrics.items()}, step=step
            )


@dataclass
class Fitted:
    model: nn.Module
    history: list[dict[str, float]]
    test_accuracy: float
    seconds: float


@dataclass
class StageTraining:
    """What the variants of one stage share."""

    stage: str
    params: Params
    cfg: TrainParams
    model: Selected
    runtime: Runtime
    splits: dict[str, Split]
    train_split: str = "train"
    augmentation: Augmentation = field(default_factory=Augmentation)
    warm_start: WarmStart | None = None  # every variant first trains on a random share of the split
    dataset: tuple[str, Path] | None = None  # the dataset's name and prepared file (MLflow dataset inputs)
    # what the models are built for (classes, channels, image size, normalisation); None: read off the
    # training split, the classes named by their numbers
    fmt: DataFormat | None = None

    def __post_init__(self) -> None:
        if self.fmt is None:
            classes = tuple(str(i) for i in range(self.runtime.num_classes))
            self.fmt = DataFormat.of(self.splits[self.train_split].x, classes)

    @classmethod
    def on_source_task(
        cls,
        stage: str,
        params: Params,
        plugins: Selections,
        cfg: TrainParams,
        model_key: str,
        warm_start: WarmStart | None = None,
    ) -> StageTraining:
        """A stage that trains on the source task's training split, augmented as ``cfg.augment`` says."""
        fmt = datasets.format_of(params, "source")
        runtime = Runtime.from_params(params.runtime, params.seed, fmt.num_classes)
        splits = load_splits(layout.prepared(params, layout.SOURCE_FILE))
        augmentation = Augmentation.for_stage(
            params, plugins.augmenters(), cfg.augment, stage, splits["train"]
        )
        return cls(
            stage,
            params,
            cfg,
            plugins.model(model_key),
            runtime,
            splits,
            augmentation=augmentation,
            warm_start=warm_start,
            dataset=(params.data.dataset.name, layout.prepared(params, layout.SOURCE_FILE)),
            fmt=fmt,
        )

    def without_classes(self, classes: Sequence[int]) -> int:
        """Drop the training images of ``classes`` (from the offline copies too); how many were dropped."""
        if not classes:
            return 0
        train = self.splits[self.train_split]
        keep = ~np.isin(train.y, np.asarray(classes))
        self.splits = {**self.splits, self.train_split: take(train, keep)}
        copies = self.augmentation.copies
        if copies is not None:
            self.augmentation = replace(
                self.augmentation, copies=AugmentedCopies(copies.x[:, keep], copies.targets[:, keep])
            )
        return int((~keep).sum())

    def _train_set(self, variant: Variant) -> Split:
        return variant.train if variant.train is not None else self.splits[self.train_split]

    def tags(self, variants: Sequence[Variant]) -> dict[str, str]:
        """Plugin tags of the augmentation, the variants' losses and the model."""
        plugins = [*self.augmentation.plugins, *(p for v in variants for p in v.losses.plugins)]
        models = [self.model, *(v.model for v in variants if v.model is not None)]
        return {**plugin_tags(plugins), **{m.info.tag: m.info.provenance for m in models}}

    def run(
        self, tracker: Tracker, variants: Sequence[Variant], own_runs: bool | None = None
    ) -> dict[str, Fitted]:
        """Train, test, save and log each variant in turn. With ``own_runs`` (default: when there are
        several) each is also logged to its own run under the stage's run, and its name prefixes its
        metrics in the stage's run."""
        own_runs = len(variants) > 1 if own_runs is None else own_runs
        fitted = {}
        for variant in variants:
            if own_runs:
                with tracker.variant(variant.name, self.tags([variant])) as own:
                    log = VariantLog.of(self.stage, variant.name, tracker, own)
                    fitted[variant.name] = self._fit(variant, log)
            else:
                fitted[variant.name] = self._fit(
                    variant, VariantLog.of(self.stage, variant.name, tracker, None)
                )
        return fitted

    def _fit(self, variant: Variant, log: VariantLog) -> Fitted:
        """Train, test, save (weights, sidecar, history, loss modules) and log one variant."""
        if variant.train is not None and self.augmentation.copies is not None:
            raise ParamsError(
                f"{self.stage}: '{variant.name}' trains on its own transfer set (a teacher-scored set or an "
                f"unlabelled pool), but augment.mode: offline materialised copies of the labelled training "
                f"split only; set augment.mode: online or {self.stage}.augment: false"
            )
        torch.manual_seed(self.runtime.seed)  # every variant starts from the same initial weights
        selected = variant.model or self.model
        model = selected.build_model(self.fmt.num_classes, self.fmt.channels, self.fmt.model_kwargs())
        lr_scale = variant.init(model) if variant.init is not None else None
        warm = None
        if self.warm_start is not None:
            warm = self._warm_start(variant, model, lr_scale, log)
        trainer = self.trainer(
            variant,
            model,
            log.checkpoint,
            log.label,
            lr_scale,
            lambda epoch, metrics: log(metrics, step=epoch),
            before_epoch=variant.before_epoch,
            epochs=variant.epochs_of(self.cfg),
        )
        log.own.log_params(self.model_params(variant, model))
        self._log_datasets(log.own, variant)
        log.own.log_metrics({layout.PARAMETERS: sum(p.numel() for p in model.parameters())})
        result = trainer.fit(self._train_set(variant), self.splits["val"])
        test = self.splits["test"]
        logits = self.runtime.predict(model, torch.from_numpy(test.x))
        test_acc = accuracy(logits, torch.from_numpy(test.y))
        out = variant.out or layout.model_dir(self.params, variant.name)
        if self.runtime.group.is_main:  # with several processes, rank 0 writes the outputs, once
            saved = self._save(out, model, variant, result, test_acc, warm)
            log({layout.TEST_ACCURACY: test_acc, layout.TRAIN_SECONDS: result.seconds})
            for tracker in log.trackers:
                for file in saved:
                    tracker.log_artifact(out / file, variant.name)
            for done in (trainer.checkpoint, warm["checkpoint"] if warm else None):
                if done is not None:
                    done.unlink(missing_ok=True)
        self.runtime.group.barrier()  # no process goes on before the outputs are written
        print(
            f"[{self.stage}] {variant.name}: test accuracy {test_acc:.4f} ({result.seconds:.0f} s training)"
        )
        return Fitted(model, result.history, test_acc, result.seconds)

    def trainer(
        self,
        variant: Variant,
        model: nn.Module,
        name: str,
        label: str,
        lr_scale: Callable[[str], float] | None,
        on_epoch: Callable[[int, dict[str, float]], None],
        *,
        before_epoch: Callable[[nn.Module, int], None] | None = None,
        epochs: int,
        rows: np.ndarray | None = None,
    ) -> Trainer:
        """The one place a :class:`Trainer` is built: the stage's optimisation settings for ``epochs``,
        runtime and augmentation with a variant's losses and teacher. ``name`` names its checkpoint;
        ``rows`` (of the offline copies) narrow it to a warm start's share."""
        copies = self.augmentation.copies
        if copies is not None and rows is not None:
            copies = AugmentedCopies(copies.x[:, rows], copies.targets[:, rows])
        return Trainer(
            self.stage,
            model,
            variant.losses,
            replace(self.cfg, epochs=epochs),
            self.runtime,
            augmenters=self.augmentation.online,
            teacher=variant.teacher,
            copies=copies,
            checkpoint=layout.checkpoint(self.params, name),
            label=label,
            lr_scale=lr_scale,
            on_epoch=on_epoch,
            before_epoch=before_epoch,
        )

    def _log_datasets(self, tracker: Tracker, variant: Variant) -> None:
        """The model's training, validation and test data as MLflow dataset inputs: the prepared splits,
        named ``<dataset>-<split>``, with a digest of their images and labels."""
        if self.dataset is None or not tracker.active:
            return
        name, source = self.dataset
        own = "scored transfer set" if variant.train is not None else self.train_split
        for split, data, context in (
            (own, self._train_set(variant), "training"),
            ("val", self.splits["val"], "validation"),
            ("test", self.splits["test"], "test"),
        ):
            tracker.log_dataset(f"{name}-{split}", split_digest(data), source.resolve(), context)

    def model_params(self, variant: Variant, model: nn.Module) -> dict[str, Any]:
        """What this model is and how it trained, under the same keys for every model (teacher, students,
        transferred, scratch), so MLflow's compare view lines the models up."""
        selected = variant.model or self.model
        augmenters = ", ".join(p.describe() for p in self.augmentation.plugins) or "none"
        return {
            "model": selected.spec.describe(),
            "model.name": selected.spec.name,
            "losses": " + ".join(f"{t.weight:g} {t.plugin.describe()}" for t in variant.losses.terms),
            "teacher": type(variant.teacher).__name__ if variant.teacher is not None else "none",
            "stage": self.stage,
            "seed": self.runtime.seed,
            "train_images": len(self._train_set(variant)),
            "epochs": variant.epochs_of(self.cfg),
            "batch_size": self.cfg.batch_size,
            "optimizer": self.cfg.optimizer,
            "lr": self.cfg.lr,
            "weight_decay": self.cfg.weight_decay,
            "schedule": self.cfg.schedule,
            "augment": augmenters if self.augmentation.copies is None else f"offline copies of {augmenters}",
            "init": variant.meta.get("init", "copied weights" if variant.init is not None else "random"),
        }

    def _warm_start(
        self,
        variant: Variant,
        model: nn.Module,
        lr_scale: Callable[[str], float] | None,
        log: VariantLog,
    ) -> dict[str, Any]:
        """Sub-model weight transfer: train ``model`` on a seeded random share of the training split;
        the training on the whole split then starts from these weights, with a fresh optimizer and
        schedule. Its checkpoint is kept until the variant is done, so a rerun after an interruption of
        the second phase does not train the first again."""
        ws = self.warm_start
        train = self._train_set(variant)
        n = max(1, round(ws.fraction * len(train)))
        idx = np.sort(np.random.default_rng([self.runtime.seed, 1]).permutation(len(train))[:n])
        trainer = self.trainer(
            variant,
            model,
            f"{log.checkpoint}-warm_start",
            f"{variant.name} warm start".strip(),
            lr_scale,
            lambda epoch, m: log({f"warm_start.{k}": v for k, v in m.items()}, step=epoch),
            epochs=ws.epochs,
            rows=idx,
        )
        checkpoint = trainer.checkpoint
        result = trainer.fit(take(train, idx), self.splits["val"])
        print(
            f"[{self.stage}] {variant.name}: warm start on {n} of {len(train)} images for {ws.epochs} "
            f"epochs ({result.seconds:.0f} s), then the whole split"
        )
        return {
            "fraction": ws.fraction,
            "epochs": ws.epochs,
            "images": n,
            "seconds": round(result.seconds, 2),
            "checkpoint": checkpoint,
        }

    def _save(
        self,
        out: Path,
        model: nn.Module,
        variant: Variant,
        result: TrainResult,
        test_acc: float,
        warm: dict[str, Any] | None,
    ) -> list[str]:
        """Weights, sidecar, history and trainable loss modules of a trained variant; the files written."""
        extra = {
            layout.TEST_ACCURACY: test_acc,
            layout.TRAIN_SECONDS: round(result.seconds, 2),
            "epochs": variant.epochs_of(self.cfg),
            "resumed_from_epoch": result.resumed_from,
            **variant.meta,
        }
        if warm is not None:
            extra["warm_start"] = {k: v for k, v in warm.items() if k != "checkpoint"}
        selected = variant.model or self.model
        save_model(
            out,
            model,
            selected.spec,
            self.fmt.num_classes,
            self.fmt.channels,
            selected.info,
            extra,
            selected.model_kwargs(self.fmt.model_kwargs()),
        )
        write_text(out / layout.HISTORY, history_csv(result.history))
        saved = [layout.WEIGHTS, layout.META, layout.HISTORY]
        if variant.losses.modules.state_dict():
            save_weights(out / layout.LOSS_WEIGHTS, variant.losses.modules)
            saved.append(layout.LOSS_WEIGHTS)
        return saved


def init_variant(init: InitParams | None, key: str, plugin: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``Variant`` keywords that start a model from ``init``'s weights (none when unset)."""
    if init is None:
        return {}
    record: dict[str, str] = {}

    def start(model: nn.Module) -> None:
        record.update(apply_init(model, init, key, plugin, kwargs))

    return {"init": start, "meta": {"init": f"{key}: {init.weights}", "init_record": record}}


def check_later_stages(params: Params, plugins: Selections, features: bool, plugin: bool, what: str) -> None:
    """What the distill and transfer stages will ask of this teacher, checked now: feature losses need a
    PyTorch teacher fed the data's own images, transfer_then_distil one it can copy."""
    if not features:
        losses = LossSet.build(plugins.losses("distill.losses"), "distill")
        if losses.teacher_taps:
            tapping = [t.name for t in losses.terms if teacher_taps(t.plugin.obj)]
            raise ParamsError(
                f"distill.losses: {tapping} tap the teacher's features "
                f"({list(losses.teacher_taps)}), but teacher.source is {what}, which has no features to tap; "
                f"use logit losses (kd, dkd, dist, ...) or teacher.source: {{weights: FILE, model: ...}} of "
                f"the data's image format"
            )
    if not plugin and params.transfer.order == "transfer_then_distil":
        raise ParamsError(
            f"transfer.order: transfer_then_distil adapts the teacher's weights to the target task, but "
            f"teacher.source is {what}, whose weights cannot be copied into a model plugin; use "
            f"distil_then_transfer, or teacher.source: {{weights: FILE, model: ...}}"
        )
