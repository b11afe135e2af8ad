"""SIGTERM/SIGINT handling for stages.

Outside a training loop a signal raises :class:`StageInterrupted` at once, so the stage's cleanup
(marking the MLflow run KILLED) runs. Inside :func:`deferred` the signal is only recorded; the loop
calls :func:`check` at a step boundary, where the state is consistent, saves a checkpoint and then
raises. Exit status for an interrupted stage is 128 + signal number, as a shell would report it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class StageInterrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state: dict[str, Any] = {"defer": False, "pending": None}


def _handler(signum: int, _frame: Any) -> None:
    if _state["defer"]:
        _state["pending"] = signum
        return
    raise StageInterrupted(signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Record signals instead of raising; call :func:`check` at safe points."""
    old = _state["defer"]
    _state["defer"] = True
    try:
        yield
    finally:
        _state["defer"] = old


def pending() -> int | None:
    return _state["pending"]


def check() -> None:
    """Raise the recorded signal, if any."""
    signum = _state["pending"]
    if signum is not None:
        _state["pending"] = None
        raise StageInterrupted(signum)


def raise_pending(default: int) -> None:
    """Raise the recorded signal, or ``default`` where another process got it (several training
    processes stop together, see :mod:`pipeline.distributed`)."""
    signum = _state["pending"] or default
    _state["pending"] = None
    raise StageInterrupted(signum)
