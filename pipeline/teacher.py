"""Stage 2, teacher: train the teacher on the source task.

Output (``<paths.models>/teacher``): ``model.safetensors``, ``model.json``, ``history.csv``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import stage, tracking
from pipeline.data import IN_CHANNELS, NUM_CLASSES, load_splits
from pipeline.modelio import build_model
from pipeline.params import Params
from pipeline.prepare import SOURCE_FILE
from pipeline.training import build_losses, plugin_tags, setup_runtime


def out_dir(params: Params) -> Path:
    return Path(params.paths.models) / "teacher"


def run(params: Params, params_file: Path) -> stage.Fitted:
    cfg = params.teacher
    device = setup_runtime(params.runtime, params.seed)
    splits = load_splits(Path(params.paths.prepared) / SOURCE_FILE)
    model, info = build_model(cfg.model, NUM_CLASSES, IN_CHANNELS)
    losses = build_losses(cfg.losses, "teacher")
    aug = stage.augmentation(params, cfg.augment, "teacher", splits["train"])
    tags = {**plugin_tags([*losses, *aug.plugins]), info.tag: info.provenance}
    with tracking.stage_run("teacher", params, params_file, tags) as tracker:
        trainer = stage.make_trainer(
            params, "teacher", "teacher", model, losses, cfg, aug.online, device, copies=aug.copies
        )
        return stage.fit_and_save(
            "teacher",
            trainer,
            splits["train"],
            splits["val"],
            splits["test"],
            out_dir(params),
            cfg.model,
            info,
            [tracker],
        )


def main(argv: list[str] | None = None) -> None:
    stage.main("teacher", run, argv)


if __name__ == "__main__":
    main()
