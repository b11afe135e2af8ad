"""Stage 1, prepare: load the source dataset (``data.dataset``) and the transfer target
(``target.dataset``), both dataset plugins, verify them, split them.

Outputs (in ``paths.prepared``): ``source.npz`` (train/val/test of the source task), ``target.npz``
(finetune/val/test of the target task; finetune holds ``target.label_budget`` labelled images), both
uint8 and uncompressed so that the training stages memory-map them, and ``summary.json`` (counts, class
histograms, where the data came from, checksums, and each task's format: class names, channels, size
and the normalisation statistics of the source's training split, which every model is built with).
The target's images are converted to the source's channels and size when they differ, so that the
student's weights copy over to the target task. In ``paths.augmented``:
the offline augmented copies of the training split when ``augment.mode`` is ``offline`` (see
``pipeline.offline_copies``), and a manifest either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data, datasets, layout, offline_copies, runner, tracking
from pipeline.atomic import write_json
from pipeline.errors import ParamsError
from pipeline.params import Params
from pipeline.protocols import ImageDataset
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


def _describe(splits: dict[str, data.Split], num_classes: int) -> dict[str, Any]:
    return {
        name: {"count": len(s)}
        if name == "unlabelled"
        else {"count": len(s), "class_counts": np.bincount(s.y, minlength=num_classes).tolist()}
        for name, s in splits.items()
    }


def materialise_copies(
    ctx: StageContext, train: data.Split, num_classes: int
) -> tuple[offline_copies.AugmentedCopies | None, dict]:
    """Offline mode: the K augmented copies of the training split, and the plugin tags they used."""
    params = ctx.params
    if params.augment.mode != "offline":
        return None, {}
    augs = build_augmenters(ctx.plugins.augmenters(), "prepare")
    copies = offline_copies.materialise(train, augs, params.augment.copies, params.seed, num_classes)
    return copies, plugin_tags(augs)


def target_pool(dataset: ImageDataset, fmt: data.DataFormat) -> tuple[data.Split, list[int] | None]:
    """The target task as one pool (every split the dataset has, for ``split_target``), in the source's
    input format ``fmt``; and the shape it was converted from, if it was."""
    pool = data.Split.concat(*(datasets.as_split(dataset, name) for name in dataset.splits))
    own = list(pool.x.shape[1:])
    if tuple(own) == fmt.shape:
        return pool, None
    return data.Split(data.convert_images(pool.x, *fmt.shape), pool.y), own


def _shape(shape: Sequence[int]) -> str:
    channels, height, width = shape
    return f"{'grey' if channels == 1 else 'RGB'} {height}x{width}"


def run(ctx: StageContext) -> dict[str, Any]:
    params = ctx.params
    with tracking.stage_run("prepare", params, ctx.params_file) as tracker:
        source_data = datasets.load(ctx.plugins.dataset("data.dataset"))
        target_data = datasets.load(ctx.plugins.dataset("target.dataset"))
        datasets.check_square(source_data, "data.dataset")
        info = dict(source_data.info)
        train = datasets.as_split(source_data, "train")
        if "test" in source_data.splits:
            test = datasets.as_split(source_data, "test")
        else:  # no test set of its own: hold one out of the training images, by the seed
            train, test = hold_out(train, params.data.val_size, params.seed + 3, "data.dataset")
        source = split_source(train, test, params)
        fmt = datasets.source_format(source_data, source["train"])
        ctx.plugins.check_models(fmt)  # built for this data: a keyword they reject fails now
        target_fmt = datasets.target_format(fmt, target_data)
        # the target task is one pool (every split the dataset has), split by split_target
        pool, converted_from = target_pool(target_data, fmt)
        target = split_target(pool, params)
        data.save_splits(layout.prepared(params, layout.SOURCE_FILE), source)
        data.save_splits(layout.prepared(params, layout.TARGET_FILE), target)
        copies, aug_tags = materialise_copies(ctx, source["train"], fmt.num_classes)
        offline_copies.write(Path(params.paths.augmented), params, len(source["train"]), copies)
        tracker.set_tags(aug_tags)
        summary = {
            "source": {
                "dataset": params.data.dataset.name,
                "selection": params.data.dataset.describe(),
                "classes": list(source_data.classes),
                "format": fmt.to_json(),
                **info,
                "splits": _describe(source, fmt.num_classes),
            },
            "target": {
                "dataset": params.target.dataset.name,
                "selection": params.target.dataset.describe(),
                "classes": list(target_data.classes),
                "format": target_fmt.to_json(),
                "converted_from": converted_from,  # [C, H, W] of its own images, or null
                **dict(target_data.info),
                "splits": _describe(target, target_fmt.num_classes),
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
            f"[prepare] {params.data.dataset.name} from {origin}: {fmt.num_classes} classes of "
            f"{_shape(fmt.shape)} images (mean {list(fmt.mean)}, std {list(fmt.std)}); "
            + ", ".join(f"{k} {len(v)}" for k, v in source.items())
            + f"; target {params.target.dataset.name}: {target_fmt.num_classes} classes, "
            + ", ".join(f"{k} {len(v)}" for k, v in target.items())
            + (f"; {len(copies)} offline augmented copies" if copies is not None else "")
        )
        for key, found in (("data.dataset", source_data), ("target.dataset", target_data)):
            changed = {k: v for k, v in found.info.items() if k.startswith("images_") and v}
            if changed:
                print(
                    f"[prepare] {key}: "
                    + ", ".join(f"{v} images {k.removeprefix('images_')}" for k, v in changed.items())
                )
        if converted_from is not None:
            print(
                f"[prepare] target.dataset: its {_shape(converted_from)} images were converted to the source's "
                f"{_shape(fmt.shape)}, so the student's weights copy over to the target task"
            )
        return summary


def main(argv: list[str] | None = None) -> None:
    runner.main("prepare", run, argv)


if __name__ == "__main__":
    main()
