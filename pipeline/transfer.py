"""Stage 4, transfer: adapt to the target task, against a from-scratch baseline.

``transfer.order`` says what is adapted:
- ``distil_then_transfer`` (default): the transferred model is the student architecture built for the
  target classes, with every weight copied from the distilled student except the head
  (``transfer.head``: module names, or ``auto`` for the fully connected layers after the last
  convolution), which starts fresh.
- ``transfer_then_distil``: the teacher is adapted that way instead (copied from the source teacher,
  trained on the target's labelled images), then the student architecture is distilled from the adapted
  teacher on the same images with ``distill.losses``, starting from random weights: the source task
  reaches the student only through the adapted teacher. The adapted teacher is saved in
  ``paths.transferred``/teacher.

``transfer.variant`` (finetune, linear_probe, gradual) says how the copied model is trained. The
baseline is the student architecture, same seed, same target data and training, from random weights.

Outputs (``paths.transferred`` and ``paths.scratch``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipeline import datasets, distributed, layout, runner, teachers, tracking
from pipeline.atomic import read_json, write_json
from pipeline.data import DataFormat, Split, load_splits
from pipeline.errors import DistillopsError
from pipeline.loss_set import LossSet
from pipeline.modelio import load_model
from pipeline.params import Params, PluginSpec
from pipeline.runner import StageContext
from pipeline.selection import Selected, Selections
from pipeline.stage_outputs import PreparedSummary
from pipeline.tracking import Tracker
from pipeline.training import Runtime
from pipeline.variants import Augmentation, Fitted, StageTraining, Variant, check_later_stages

ADAPTED_TEACHER = "teacher"  # the adapted teacher's folder inside paths.transferred (transfer_then_distil)


def find_head(model: nn.Module, names: tuple[str, ...] = ("auto",)) -> tuple[str, ...]:
    """The modules whose weights are not transferred.

    ``auto``: the fully connected layers after the last convolution (the task-specific classifier on
    top of the transferable convolutional features); for a model without convolutions, its last
    Linear layer. Otherwise the named modules.
    """
    modules = dict(model.named_modules())
    if tuple(names) != ("auto",):
        missing = [n for n in names if n not in modules]
        if missing:
            raise DistillopsError(
                f"transfer.head {missing} not found in the model; its modules are: "
                f"{', '.join(n for n in modules if n)}"
            )
        return tuple(names)
    order = list(modules.items())
    convs = [i for i, (_, m) in enumerate(order) if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    linears = [i for i, (_, m) in enumerate(order) if isinstance(m, nn.Linear)]
    if not linears:
        raise DistillopsError(
            "transfer.head is 'auto' but the model has no Linear layer; name the head "
            "module(s) in transfer.head"
        )
    after_conv = [i for i in linears if not convs or i > convs[-1]]
    return tuple(order[i][0] for i in (after_conv if convs else linears[-1:]))


def _in(key: str, modules: tuple[str, ...]) -> bool:
    return any(key == m or key.startswith(f"{m}.") for m in modules)


def transfer_weights(source: nn.Module, target: nn.Module, head: tuple[str, ...]) -> dict[str, list[str]]:
    """Copy every tensor of ``source`` into ``target`` except the head's; returns what was done."""
    src = source.state_dict()
    dst = target.state_dict()
    copied, fresh = [], []
    for key, value in dst.items():
        if not _in(key, head) and key in src and src[key].shape == value.shape:
            dst[key] = src[key].clone()
            copied.append(key)
        else:
            fresh.append(key)
    if not copied:
        raise DistillopsError(
            "transfer copied no weights: the source and target models share no tensor of the "
            "same name and shape"
        )
    target.load_state_dict(dst)
    return {"copied": copied, "fresh": fresh}


def _body_lr_scale(head: tuple[str, ...], scale: float) -> Callable[[str], float]:
    """Copied layers learn at ``scale`` times the learning rate, the fresh head at the full rate."""
    return lambda name: 1.0 if _in(name, head) else scale


class CopyFrom:
    """A transferred variant's initialisation: every weight of ``source`` but the head's, which
    starts fresh; copied layers then learn at ``transfer.body_lr_scale`` times the learning rate.
    What was copied is written to ``out``/transfer.json."""

    def __init__(self, source: nn.Module, params: Params, source_name: str, out: Path) -> None:
        self.source, self.params, self.source_name, self.out = source, params, source_name, out
        self.report: dict[str, list[str]] = {"copied": [], "fresh": []}

    def __call__(self, model: nn.Module) -> Callable[[str], float]:
        cfg = self.params.transfer
        head = find_head(model, cfg.head)
        self.report = transfer_weights(self.source, model, head)
        if distributed.current().is_main:
            write_json(
                self.out / "transfer.json", {"source": self.source_name, "head": list(head), **self.report}
            )
        print(
            f"[transfer] copied {len(self.report['copied'])} tensors from the {self.source_name}; "
            f"head {list(head)} starts fresh ({len(self.report['fresh'])} tensors)"
        )
        return _body_lr_scale(head, cfg.body_lr_scale)


class Unfreezing:
    """Which layers of the transferred model train, epoch by epoch (``transfer.variant``).

    The layers are the modules that hold parameters themselves. The head always trains.
    ``linear_probe``: the copied body never does (a linear probe of the transferred features).
    ``gradual``: the body unfreezes from the top down (gradual unfreezing, as in Howard and Ruder,
    "Universal Language Model Fine-tuning", ACL 2018): epoch 0 trains the head alone, and by the middle
    epoch every layer trains, an equal share of the body's layers joining at each epoch in between.
    A frozen layer gets no gradient and runs in eval mode (its BatchNorm statistics stay as copied).
    """

    def __init__(self, variant: str, head: tuple[str, ...], epochs: int) -> None:
        self.variant, self.head_names = variant, head
        self.full_at = max(1, math.ceil(epochs / 2))  # the epoch from which everything trains

    def trainable_body_layers(self, layers: int, epoch: int) -> int:
        if self.variant == "linear_probe":
            return 0
        return min(layers, math.ceil(layers * epoch / self.full_at))

    def __call__(self, model: nn.Module, epoch: int) -> None:
        head = find_head(model, self.head_names)
        body = [
            module
            for name, module in model.named_modules()
            if name and not _in(name, head) and next(module.parameters(recurse=False), None) is not None
        ]
        trainable = self.trainable_body_layers(len(body), epoch)
        for i, module in enumerate(body):
            train = i >= len(body) - trainable  # the top layers first
            module.train(train)
            for param in module.parameters(recurse=False):
                param.requires_grad_(train)


def _teacher_model(params: Params, plugins: Selections) -> Selected:
    """The teacher's model plugin: ``teacher.model`` when it was trained here, else the one its sidecar
    names (an imported state dict); an ONNX or ensemble teacher has none and fails, naming the key."""
    if params.teacher.source.trains:
        return plugins.model("teacher.model")
    folder = layout.model_dir(params, "teacher")
    meta = read_json(folder / layout.META)
    caps = teachers.capabilities(meta)
    check_later_stages(params, plugins, caps["features"], caps["plugin"], teachers.describe_kind(meta))
    spec = dict(meta["model"])
    return Selected.resolve(
        f"{folder / layout.META} (the imported teacher)", "models", PluginSpec(spec.pop("name"), spec)
    )


def adapted(
    params: Params, plugins: Selections, name: str, source: str, out: Path, model: Selected | None = None
) -> tuple[Variant, CopyFrom]:
    """``source``'s trained model (teacher or student) copied into a model for the target task and
    trained there as ``transfer.variant`` says."""
    cfg = params.transfer
    weights, _meta = load_model(layout.model_dir(params, source), "cpu")
    copy = CopyFrom(weights, params, "distilled student" if source == "student" else source, out)
    before_epoch = None if cfg.variant == "finetune" else Unfreezing(cfg.variant, cfg.head, cfg.epochs)
    variant = Variant(
        name,
        LossSet.build(plugins.losses("transfer.losses"), "transfer"),
        init=copy,
        before_epoch=before_epoch,
        model=model,
        out=out,
        meta={"order": cfg.order, "variant": cfg.variant},
    )
    return variant, copy


@dataclass
class Plan:
    """What the transfer stage trains, in order."""

    scratch: Variant  # the student architecture from random weights: the baseline
    first: Variant  # the copied model: the distilled student, or (transfer_then_distil) the teacher
    copy: CopyFrom
    then: Variant | None  # transfer_then_distil: the student distilled from the adapted teacher

    @classmethod
    def of(cls, params: Params, plugins: Selections) -> Plan:
        out = layout.model_dir(params, "transferred")
        scratch = Variant("scratch", LossSet.build(plugins.losses("transfer.losses"), "transfer"))
        if params.transfer.order == "distil_then_transfer":
            first, copy = adapted(params, plugins, "transferred", "student", out)
            return cls(scratch, first, copy, None)
        first, copy = adapted(
            params, plugins, "teacher", "teacher", out / ADAPTED_TEACHER, _teacher_model(params, plugins)
        )
        then = Variant(
            "transferred",
            LossSet.build(plugins.losses("distill.losses"), "transfer"),
            meta={"order": params.transfer.order, "distilled_from": f"{out.name}/{ADAPTED_TEACHER}"},
        )
        return cls(scratch, first, copy, then)

    @property
    def variants(self) -> list[Variant]:
        return [self.scratch, self.first, *([self.then] if self.then else [])]

    def train(
        self, training: StageTraining, tracker: Tracker, scratch: bool = True
    ) -> tuple[dict[str, Fitted], dict[str, float]]:
        """Train the plan (without the baseline unless ``scratch``); the models and the stage's metrics."""
        fitted = training.run(tracker, [self.scratch, self.first] if scratch else [self.first], own_runs=True)
        metrics = {
            "copied_tensors": len(self.copy.report["copied"]),
            "fresh_tensors": len(self.copy.report["fresh"]),
        }
        if self.then is not None:
            self.then.teacher = fitted["teacher"].model
            fitted |= training.run(tracker, [self.then], own_runs=True)
            metrics["adapted_teacher_accuracy"] = fitted["teacher"].test_accuracy
        return fitted, metrics


def target_training(
    params: Params, plugins: Selections, splits: dict[str, Split], fmt: DataFormat | None = None
) -> StageTraining:
    """The transfer stage's training on the target task's labelled images (``finetune``), for data of
    format ``fmt`` (default: the target format ``prepare`` recorded)."""
    cfg = params.transfer
    fmt = fmt or datasets.format_of(params, "target")
    return StageTraining(
        "transfer",
        params,
        cfg,
        plugins.model("student.model"),
        Runtime.from_params(params.runtime, params.seed, fmt.num_classes),
        splits,
        train_split="finetune",
        # another dataset than the one the offline copies were made from: always online
        augmentation=Augmentation.online_only(plugins.augmenters(), cfg.augment, "transfer"),
        dataset=(params.target.dataset.name, layout.prepared(params, layout.TARGET_FILE)),
        fmt=fmt,
    )


def run(ctx: StageContext) -> dict[str, Fitted]:
    params, cfg = ctx.params, ctx.params.transfer
    splits = load_splits(layout.prepared(params, layout.TARGET_FILE))
    training = target_training(params, ctx.plugins, splits)
    plan = Plan.of(params, ctx.plugins)
    with tracking.stage_run("transfer", params, ctx.params_file, training.tags(plan.variants)) as tracker:
        converted = PreparedSummary.read(params).target.converted_from
        if converted:
            own, source = "x".join(map(str, converted)), "x".join(map(str, training.fmt.shape))
            tracker.set_tags({"distillops.target_converted": f"{own} -> {source}"})
            print(
                f"[transfer] the target's {own} images (channels x height x width) were converted to the "
                f"source's {source} in prepare, so the student's weights copy over"
            )
        fitted, metrics = plan.train(training, tracker)
        transferred, scratch = fitted["transferred"].test_accuracy, fitted["scratch"].test_accuracy
        tracker.log_metrics({**metrics, layout.TRANSFER_GAIN: transferred - scratch})
        print(
            f"[transfer] {cfg.order.replace('_', ' ')}, {cfg.variant}: transferred {transferred:.4f} vs "
            f"scratch {scratch:.4f}: gain {(transferred - scratch) * 100:+.2f} pt "
            f"({len(splits['finetune'])} labelled target images)"
        )
    return fitted


def main(argv: list[str] | None = None) -> None:
    runner.main("transfer", run, argv)


if __name__ == "__main__":
    main()
