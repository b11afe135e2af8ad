"""Starting a training stage as several processes: ``runtime.processes: N`` (N > 1) relaunches
``python -m pipeline.<stage>`` under torchrun (``torch.distributed.run --standalone``, one machine),
which starts N workers; :mod:`pipeline.distributed` is what each worker does with its rank.

For several machines, start torchrun yourself on each (``torchrun --nnodes ... -m pipeline.teacher``):
a stage that finds torchrun's environment (``WORLD_SIZE``) trains as its worker and relaunches nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.errors import DistillopsError

# the stages that train, and so can run as several processes
TRAINING_STAGES = ("teacher", "distill", "transfer")
_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def relaunch(stage: str, processes: int, device: str, argv: Sequence[str]) -> int | None:
    """Run ``stage`` as ``processes`` torchrun workers and return their exit status; None when this
    process is to train itself (one process asked for, a stage that does not train, or already a
    torchrun worker).

    SIGTERM and SIGINT are passed on to torchrun, which passes them to its workers; they checkpoint at
    the same step and exit, so an interrupted run resumes as a single-process one does."""
    if processes <= 1 or stage not in TRAINING_STAGES or "WORLD_SIZE" in os.environ:
        return None
    _check(stage, processes, device)
    command = [
        sys.executable,
        "-m",
        "pipeline.launch",  # torchrun, reporting as a single process would (see _torchrun)
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        f"pipeline.{stage}",
        *argv,
    ]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores among the workers instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    print(f"[{stage}] runtime.processes: {processes}: torchrun {' '.join(command[3:])}", flush=True)
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check(stage: str, processes: int, device: str) -> None:
    """Refuse a process count that cannot run, before any worker starts."""
    import torch

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and processes > torch.cuda.device_count():
        raise DistillopsError(
            f"runtime.processes: {processes}, but {torch.cuda.device_count()} CUDA device(s) are visible and "
            f"each process trains on its own; set runtime.processes to at most that"
        )
    cores = os.cpu_count() or 1
    if not cuda and processes > cores:
        print(
            f"[{stage}] note: runtime.processes: {processes} on {cores} CPU cores: more processes than cores "
            f"train slower, not faster",
            file=sys.stderr,
        )


def shutdown() -> None:
    """Leave the process group (a no-op with one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _torchrun(argv: list[str]) -> int:
    """``torchrun ARGS`` (torch.distributed.run with its elastic agent) with a single process's exit
    status: a worker's own (rank 0 has reported why), or 128 + N when signal N stopped it; without the
    launcher's tracebacks for what the workers report themselves."""
    import logging

    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        run.run(run.parse_args(argv))
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if code not in (1, 2) and code < 128:  # not an error the stage reported itself
            print(f"training process {rank} exited with status {code}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun(sys.argv[1:]))
