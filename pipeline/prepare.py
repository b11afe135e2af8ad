"""Stage 1, prepare: load the source dataset (``data.dataset``) and the transfer target
(``target.dataset``), both dataset plugins, verify them, split them.

Outputs (in ``paths.prepared``): ``source.npz`` (train/val/test of the source task), ``target.npz``
(finetune/val/test of the target task; finetune holds ``target.label_budget`` labelled images) and
``summary.json`` (counts, class histograms, where the data came from, checksums). In ``paths.augmented``:
the offline augmented copies of the training split when ``augment.mode`` is ``offline`` (see
``pipeline.offline_copies``), and a manifest either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data, datasets, layout, offline_copies, runner, tracking
from pipeline.atomic import write_json
from pipeline.errors import ParamsError
from pipeline.params import Params
from pipeline.runner import StageContext
from pipeline.selection import build_augmenters, plugin_tags


def split_source(train: data.Split, test: data.Split, params: Params) -> dict[str, data.Split]:
    val_size = params.data.val_size
    if val_size >= len(train):
        raise ParamsError(f"data.val_size ({val_size}) must be smaller than the training set ({len(train)})")
    perm = data.permutation(len(train), params.seed)
    val = data.take(train, perm[:val_size])
    rest = data.take(train, perm[val_size:]).head(params.data.train_limit)
    test_perm = data.permutation(len(test), params.seed + 1)
    splits = {
        "train": rest,
        "val": val.head(params.data.test_limit),
        "test": data.take(test, test_perm).head(params.data.test_limit),
    }
    pool = round(params.data.unlabelled_fraction * len(rest))
    if pool:  # the first `pool` images of the (already shuffled) training split lose their labels
        if pool == len(rest):
            raise ParamsError(
                f"data.unlabelled_fraction ({params.data.unlabelled_fraction}) leaves no labelled training "
                f"image out of {len(rest)}; lower it"
            )
        withheld = np.full(pool, data.UNLABELLED, dtype=np.int64)
        splits["unlabelled"] = data.Split(rest.x[:pool], withheld)
        splits["train"] = data.take(rest, np.arange(pool, len(rest)))
    return splits


def hold_out(split: data.Split, size: int, seed: int, key: str) -> tuple[data.Split, data.Split]:
    """(the rest, ``size`` images held out by ``seed``): a test split for a dataset without one."""
    if size >= len(split):
        raise ParamsError(
            f"{key} has no test split of its own, so {size} images (data.val_size) are held out of its "
            f"{len(split)} as the test split: too many; lower data.val_size"
        )
    perm = data.permutation(len(split), seed)
    return data.take(split, perm[size:]), data.take(split, perm[:size])


def split_target(digits: data.Split, params: Params) -> dict[str, data.Split]:
    t = params.target
    if t.test_size + t.val_size + t.label_budget > len(digits):
        raise ParamsError(
            f"target.test_size + target.val_size + target.label_budget = "
            f"{t.test_size + t.val_size + t.label_budget} exceeds the {len(digits)} images of {t.dataset.name}"
        )
    perm = data.permutation(len(digits), params.seed + 2)
    test = data.take(digits, perm[: t.test_size])
    val = data.take(digits, perm[t.test_size : t.test_size + t.val_size])
    pool = perm[t.test_size + t.val_size :]
    return {
        "finetune": data.take(digits, pool[: t.label_budget]),
        "val": val.head(params.data.test_limit),
        "test": test.head(params.data.test_limit),
    }


def _describe(splits: dict[str, data.Split]) -> dict[str, Any]:
    return {
        name: {"count": len(s)}
        if name == "unlabelled"
        else {"count": len(s), "class_counts": np.bincount(s.y, minlength=data.NUM_CLASSES).tolist()}
        for name, s in splits.items()
    }


def materialise_copies(
    ctx: StageContext, train: data.Split
) -> tuple[offline_copies.AugmentedCopies | None, dict]:
    """Offline mode: the K augmented copies of the training split, and the plugin tags they used."""
    params = ctx.params
    if params.augment.mode != "offline":
        return None, {}
    augs = build_augmenters(ctx.plugins.augmenters(), "prepare")
    copies = offline_copies.materialise(train, augs, params.augment.copies, params.seed, data.NUM_CLASSES)
    return copies, plugin_tags(augs)


def run(ctx: StageContext) -> dict[str, Any]:
    params = ctx.params
    with tracking.stage_run("prepare", params, ctx.params_file) as tracker:
        source_data = datasets.load(ctx.plugins.dataset("data.dataset"))
        target_data = datasets.load(ctx.plugins.dataset("target.dataset"))
        for key, found in (("data.dataset", source_data), ("target.dataset", target_data)):
            datasets.supported_by_models(found, key)
        info = dict(source_data.info)
        train = datasets.as_split(source_data, "train")
        if "test" in source_data.splits:
            test = datasets.as_split(source_data, "test")
        else:  # no test set of its own: hold one out of the training images, by the seed
            train, test = hold_out(train, params.data.val_size, params.seed + 3, "data.dataset")
        source = split_source(train, test, params)
        # the target task is one pool (every split the dataset has), split by split_target
        pool = data.Split.concat(*(datasets.as_split(target_data, name) for name in target_data.splits))
        target = split_target(pool, params)
        data.save_splits(layout.prepared(params, layout.SOURCE_FILE), source)
        data.save_splits(layout.prepared(params, layout.TARGET_FILE), target)
        copies, aug_tags = materialise_copies(ctx, source["train"])
        offline_copies.write(Path(params.paths.augmented), params, len(source["train"]), copies)
        tracker.set_tags(aug_tags)
        summary = {
            "source": {
                "dataset": params.data.dataset.name,
                "selection": params.data.dataset.describe(),
                "classes": list(source_data.classes),
                **info,
                "splits": _describe(source),
            },
            "target": {
                "dataset": params.target.dataset.name,
                "selection": params.target.dataset.describe(),
                "classes": list(target_data.classes),
                **dict(target_data.info),
                "splits": _describe(target),
            },
        }
        summary_file = layout.prepared(params, layout.SUMMARY_FILE)
        write_json(summary_file, summary)
        counts = {f"source.{k}_count": len(v) for k, v in source.items()}
        counts |= {f"target.{k}_count": len(v) for k, v in target.items()}
        tracker.log_metrics(counts)
        origin = str(info.get("origin", params.data.dataset.name))
        tracker.set_tags({"distillops.data_origin": origin})
        tracker.log_artifact(summary_file)
        print(
            f"[prepare] {params.data.dataset.name} from {origin}: "
            + ", ".join(f"{k} {len(v)}" for k, v in source.items())
            + f"; target {params.target.dataset.name}: "
            + ", ".join(f"{k} {len(v)}" for k, v in target.items())
            + (f"; {len(copies)} offline augmented copies" if copies is not None else "")
        )
        return summary


def main(argv: list[str] | None = None) -> None:
    runner.main("prepare", run, argv)


if __name__ == "__main__":
    main()
