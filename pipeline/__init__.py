"""distillops core: parameters, plugin discovery, data, training, tracking and the six DVC stages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distillops")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
