"""Stage 4, transfer: adapt the distilled student to the target task, against a from-scratch baseline.

The transferred model is the student architecture built for the target classes, with every weight
copied from the distilled student except the head (``transfer.head``: a module name, or ``auto`` for
the last Linear/Conv layer), which starts fresh. The baseline is the same architecture, same seed,
same target data and training, starting from random weights.

Outputs (``<paths.models>/transferred`` and ``<paths.models>/scratch``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline import stage, tracking
from pipeline.data import NUM_CLASSES, load_splits
from pipeline.distill import out_dir as student_dir
from pipeline.errors import DistillopsError
from pipeline.io import write_json
from pipeline.modelio import build_model, load_model
from pipeline.params import Params
from pipeline.prepare import TARGET_FILE
from pipeline.teacher import IN_CHANNELS
from pipeline.training import Trainer, build_augmenters, build_losses, plugin_tags, setup_runtime

VARIANTS = ("scratch", "transferred")


def out_dir(params: Params, variant: str) -> Path:
    return Path(params.paths.models) / variant


def find_head(model: nn.Module, name: str = "auto") -> str:
    """The module whose weights are not transferred: named, or the last Linear/Conv layer."""
    modules = dict(model.named_modules())
    if name != "auto":
        if name not in modules:
            raise DistillopsError(
                f"transfer.head '{name}' is not a module of the model; modules: "
                f"{', '.join(n for n in modules if n)}"
            )
        return name
    candidates = [n for n, m in modules.items() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not candidates:
        raise DistillopsError(
            "transfer.head is 'auto' but the model has no Linear or Conv2d layer; "
            "name the head module in transfer.head"
        )
    return candidates[-1]


def transfer_weights(source: nn.Module, target: nn.Module, head: str) -> dict[str, list[str]]:
    """Copy every tensor of ``source`` into ``target`` except the head's; returns what was done."""
    src = source.state_dict()
    dst = target.state_dict()
    copied, fresh = [], []
    for key, value in dst.items():
        in_head = key == head or key.startswith(f"{head}.")
        if not in_head and key in src and src[key].shape == value.shape:
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


def run(params: Params, params_file: Path) -> dict[str, stage.Fitted]:
    cfg = params.transfer
    device = setup_runtime(params.runtime, params.seed)
    splits = load_splits(Path(params.paths.prepared) / TARGET_FILE)
    source, _meta = load_model(student_dir(params, "student"), "cpu")
    losses = build_losses(cfg.losses, "transfer")
    augs = build_augmenters(params.augment.ops, "transfer") if cfg.augment else []
    _, model_info = build_model(params.student.model, NUM_CLASSES, IN_CHANNELS)
    tags = {**plugin_tags([*losses, *augs]), model_info.tag: model_info.provenance}
    fitted: dict[str, stage.Fitted] = {}
    with tracking.stage_run("transfer", params, params_file, tags) as tracker:
        for variant in VARIANTS:
            setup_runtime(params.runtime, params.seed)
            model, _ = build_model(params.student.model, NUM_CLASSES, IN_CHANNELS)
            if variant == "transferred":
                head = find_head(model, cfg.head)
                report = transfer_weights(source, model, head)
                write_json(out_dir(params, variant) / "transfer.json", {"head": head, **report})
                tracker.log_metrics(
                    {"copied_tensors": len(report["copied"]), "fresh_tensors": len(report["fresh"])}
                )
                print(
                    f"[transfer] copied {len(report['copied'])} tensors from the distilled student; "
                    f"head '{head}' starts fresh ({len(report['fresh'])} tensors)"
                )
            trainer = Trainer(
                "transfer",
                model,
                losses,
                cfg,
                device,
                params.seed,
                NUM_CLASSES,
                augs,
                checkpoint=stage.checkpoint_path(params, f"transfer-{variant}"),
                progress=params.runtime.progress,
                run_label=variant,
            )
            with tracker.variant(variant, tags) as vtracker:
                fitted[variant] = stage.fit_and_save(
                    variant,
                    trainer,
                    splits["finetune"],
                    splits["val"],
                    splits["test"],
                    out_dir(params, variant),
                    params.student.model,
                    model_info,
                    IN_CHANNELS,
                    [tracker, vtracker],
                    prefix=f"{variant}.",
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
