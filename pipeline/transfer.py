"""Stage 4, transfer: adapt the distilled student to the target task, against a from-scratch baseline.

The transferred model is the student architecture built for the target classes, with every weight
copied from the distilled student except the head (``transfer.head``: module names, or ``auto`` for
the fully connected layers after the last convolution), which starts fresh. The baseline is the same architecture, same seed,
same target data and training, starting from random weights.

Outputs (``<paths.models>/transferred`` and ``<paths.models>/scratch``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from pipeline import stage, tracking
from pipeline.atomic import write_json
from pipeline.data import IN_CHANNELS, NUM_CLASSES, load_splits
from pipeline.distill import out_dir as student_dir
from pipeline.errors import DistillopsError
from pipeline.modelio import build_model, load_model
from pipeline.params import Params
from pipeline.prepare import TARGET_FILE
from pipeline.training import build_losses, plugin_tags, setup_runtime

VARIANTS = ("scratch", "transferred")


def out_dir(params: Params, variant: str) -> Path:
    return Path(params.paths.models) / variant


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


def run(params: Params, params_file: Path) -> dict[str, stage.Fitted]:
    cfg = params.transfer
    device = setup_runtime(params.runtime, params.seed)
    splits = load_splits(Path(params.paths.prepared) / TARGET_FILE)
    source, _meta = load_model(student_dir(params, "student"), "cpu")
    losses = build_losses(cfg.losses, "transfer")
    aug = stage.augmentation(params, cfg.augment, "transfer")  # another dataset: always online
    _, model_info = build_model(params.student.model, NUM_CLASSES, IN_CHANNELS)
    tags = {**plugin_tags([*losses, *aug.plugins]), model_info.tag: model_info.provenance}
    fitted: dict[str, stage.Fitted] = {}
    with tracking.stage_run("transfer", params, params_file, tags) as tracker:
        for variant in VARIANTS:
            setup_runtime(params.runtime, params.seed)
            model, _ = build_model(params.student.model, NUM_CLASSES, IN_CHANNELS)
            lr_scale = None
            if variant == "transferred":
                head = find_head(model, cfg.head)
                report = transfer_weights(source, model, head)
                write_json(out_dir(params, variant) / "transfer.json", {"head": list(head), **report})
                tracker.log_metrics(
                    {"copied_tensors": len(report["copied"]), "fresh_tensors": len(report["fresh"])}
                )
                print(
                    f"[transfer] copied {len(report['copied'])} tensors from the distilled student; "
                    f"head {list(head)} starts fresh ({len(report['fresh'])} tensors)"
                )
                lr_scale = _body_lr_scale(head, cfg.body_lr_scale)
            trainer = stage.make_trainer(
                params,
                "transfer",
                f"transfer-{variant}",
                model,
                losses,
                cfg,
                aug.online,
                device,
                label=variant,
                lr_scale=lr_scale,
            )
            fitted[variant] = stage.fit_variant(
                tracker,
                variant,
                tags,
                trainer,
                splits["finetune"],
                splits,
                out_dir(params, variant),
                params.student.model,
                model_info,
            )
        gain = fitted["transferred"].test_accuracy - fitted["scratch"].test_accuracy
        tracker.log_metrics({"transfer_gain": gain})
        print(
            f"[transfer] transferred {fitted['transferred'].test_accuracy:.4f} vs scratch "
            f"{fitted['scratch'].test_accuracy:.4f}: gain {gain * 100:+.2f} pt "
            f"({len(splits['finetune'])} labelled target images)"
        )
    return fitted


def main(argv: list[str] | None = None) -> None:
    stage.main("transfer", run, argv)


if __name__ == "__main__":
    main()
