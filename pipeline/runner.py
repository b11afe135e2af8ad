"""How every stage starts and ends: ``python -m pipeline.<stage> [--params FILE]``.

Before any work, the stage loads params, then resolves and builds every plugin the whole pipeline
selects (so a typo or an impossible value fails in seconds, naming its params key, not after an hour of
training). Errors become clear messages and exit codes; a stage that fails under ``dvc repro`` puts
back the outputs DVC removed before running it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import datasets, interrupts, launch, tracking
from pipeline.dvc_restore import restore_previous
from pipeline.errors import DistillopsError
from pipeline.params import Params, load_params
from pipeline.selection import Selections

EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class StageContext:
    """What a stage's ``run`` gets: its name, the params, their file, and every selection resolved."""

    stage: str
    params: Params
    params_file: Path
    plugins: Selections


def start(stage: str, params_file: Path) -> StageContext:
    params = load_params(params_file)
    plugins = Selections.resolve(params)
    # prepare checks the models once it knows the data (classes, channels, size): check_models
    plugins.check(None if stage == "prepare" else datasets.format_of(params, "source"))
    return StageContext(stage, params, params_file, plugins)


def main(stage: str, run: Callable[[StageContext], object], argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline.{stage}", description=f"distillops stage '{stage}'"
    )
    parser.add_argument(
        "--params", default="params.yaml", type=Path, help="params file (default: params.yaml)"
    )
    args = parser.parse_args(argv)
    try:
        with interrupts.installed():
            ctx = start(stage, args.params)
            runtime = ctx.params.runtime
            code = launch.relaunch(
                stage, runtime.processes, runtime.device, sys.argv[1:] if argv is None else argv
            )
            if code is not None:  # the torchrun workers did the work and reported it
                sys.exit(code)
            try:
                run(ctx)
            finally:
                launch.shutdown()
    except DistillopsError as exc:
        _exit(stage, f"error: stage '{stage}': {exc}", EXIT_USER_ERROR)
    except interrupts.StageInterrupted as exc:
        _exit(
            stage,
            f"stage '{stage}' interrupted ({exc}); rerun to resume from the last checkpoint",
            exc.exit_code,
        )
    except Exception as exc:
        outage = tracking.failure_in_store(exc)
        if outage:  # the store went away mid-stage: say so, keep the traceback for the record
            traceback.print_exc()
            _exit(stage, f"error: stage '{stage}': {outage}", 1)
        traceback.print_exc()
        _exit(stage, f"error: stage '{stage}' failed with an unexpected error (traceback above)", 1)


def _exit(stage: str, message: str, code: int) -> None:
    """Report a failed stage; under DVC, first put back the outputs DVC removed before running it. With
    several training processes, rank 0 reports for all."""
    if int(os.environ.get("RANK", "0")) != 0:
        sys.exit(code)
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
