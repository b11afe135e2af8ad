"""User-facing errors.

Every error a user can cause (bad params, bad data, a broken plugin) is a :class:`DistillopsError`.
Stages catch it at the top, print its message without a traceback and exit non-zero, so the message
itself must say what is wrong and what to do about it.
"""

from __future__ import annotations


class DistillopsError(Exception):
    """An error with a message meant for the user; printed without a traceback."""


class ParamsError(DistillopsError):
    """params.yaml is malformed: unknown key, wrong type or invalid value."""


class DataError(DistillopsError):
    """A dataset is missing, corrupt or truncated."""


class PluginError(DistillopsError):
    """A plugin cannot be found, loaded, built or run."""


class MissingDependencyError(DistillopsError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed. "
            f"Install it with: pip install {package}"
        )
        self.package = package


class TrainingDiverged(DistillopsError):
    """The loss became NaN or infinite."""
