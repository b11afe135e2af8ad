"""A per-user cache of what ``distillops plugins list`` shows for each plugin (summary, parameters).

Showing a plugin's summary and parameters needs its factory, so its module must be imported (and with it
torch). This cache keeps that description for every plugin that loaded successfully, so a later listing
reads entry-point metadata and one JSON file instead of importing any plugin code.

An entry is keyed on everything that can change what the factory says about itself:

- the plugin: group, name, entry-point value, distribution name and version;
- the entry point's module file (size and mtime in ns), located through the import system's finders
  *without* importing it (:func:`module_file`), so that editing an editable install invalidates it too;
  when it cannot be located (e.g. a zip import), the distribution version alone stands for it;
- the installed distributions (:func:`environment_fingerprint`: the ``*.dist-info`` / ``*.egg-info``
  names on ``sys.path``), so installing, upgrading or removing any package, such as a plugin's
  dependency, invalidates every entry.

Only successful loads are stored: a broken plugin is imported (and reported) afresh on every listing.
Editing a module other than the entry point's own one (a helper the factory imports) in an editable
install is not detected; ``distillops plugins check`` never uses the cache.

The cache lives in ``$DISTILLOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/distillops``, else
``~/.cache/distillops``. It is one JSON file written atomically (temporary file + ``os.replace``);
a missing, corrupt or unwritable cache only means no cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.registry import PluginInfo

FORMAT = 1
FILENAME = f"plugins-v{FORMAT}.json"
MAX_ENTRIES = 512  # entries not used by this listing are pruned, oldest first, beyond this many


def cache_dir() -> Path:
    """``$DISTILLOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/distillops``, else ``~/.cache/distillops``."""
    if os.environ.get("DISTILLOPS_CACHE_DIR"):
        return Path(os.environ["DISTILLOPS_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "distillops"
    return Path.home() / ".cache" / "distillops"


def module_file(module: str) -> Path | None:
    """The file that importing ``module`` would execute, found without importing it (or None).

    The top-level name goes through every finder on ``sys.meta_path`` (so setuptools' editable-install
    finders and ``.pth`` path entries both work); submodules are looked up in the parent's search
    locations with :class:`importlib.machinery.PathFinder`, which never runs the parent's ``__init__``.
    """
    parts = module.split(".")
    locations: list[str] | None = None
    spec = None
    try:
        for i in range(len(parts)):
            name = ".".join(parts[: i + 1])
            loaded = sys.modules.get(name)
            if loaded is not None:
                spec = getattr(loaded, "__spec__", None)
                path = getattr(loaded, "__path__", None)
            elif i == 0:
                spec = importlib.util.find_spec(name)  # a top-level name: nothing is imported
                path = spec.submodule_search_locations if spec is not None else None
            elif locations is None:
                return None  # the parent is not a package
            else:
                spec = importlib.machinery.PathFinder.find_spec(name, locations)
                path = spec.submodule_search_locations if spec is not None else None
            if spec is None:
                return None
            locations = list(path) if path is not None else None
    except Exception:  # a finder that misbehaves must not break the listing
        return None
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return Path(spec.origin)


def environment_fingerprint(paths: Iterable[str] | None = None) -> str:
    """A digest of the distributions installed on ``sys.path`` (their metadata folder names)."""
    names = set()
    for entry in sys.path if paths is None else paths:
        with contextlib.suppress(OSError), os.scandir(entry or ".") as it:
            names.update(e.name for e in it if e.name.endswith((".dist-info", ".egg-info")))
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def cache_key(info: PluginInfo, environment: str) -> str:
    """The key of a plugin's entry: it changes whenever the plugin's code can have changed."""
    module = info.value.split(":")[0].strip()
    stamp: list[Any] = []
    path = module_file(module)
    if path is not None:
        with contextlib.suppress(OSError):
            st = path.stat()
            stamp = [str(path), st.st_size, st.st_mtime_ns]
    fields = [FORMAT, environment, info.group, info.name, info.value, info.distribution, info.version, stamp]
    return json.dumps(fields, separators=(",", ":"))


def _valid(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("summary"), str)
        and isinstance(entry.get("parameters"), list)
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
            for p in entry["parameters"]
        )
    )


class Catalog:
    """The cached descriptions: :meth:`get` a plugin's, :meth:`put` a freshly loaded one, then :meth:`save`.

    A description is ``{"summary": str, "parameters": {keyword: default as written in params.yaml}}``.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory if directory is not None else cache_dir()) / FILENAME
        self.environment = environment_fingerprint()
        self._entries = self._read()
        self._used: set[str] = set()
        self._new: dict[str, dict[str, Any]] = {}
        self._keys: dict[PluginInfo, str] = {}

    def key(self, info: PluginInfo) -> str:
        # computed once, before the plugin is loaded: a file edited while it is being imported leaves
        # its entry under the old stamp, which the next listing does not match
        if info not in self._keys:
            self._keys[info] = cache_key(info, self.environment)
        return self._keys[info]

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            return {}
        return data["entries"]

    def get(self, info: PluginInfo) -> dict[str, Any] | None:
        key = self.key(info)
        entry = self._entries.get(key)
        if not _valid(entry):
            return None
        self._used.add(key)
        return {"summary": entry["summary"], "parameters": dict(entry["parameters"])}

    def put(self, info: PluginInfo, description: dict[str, Any]) -> None:
        """Remember a plugin that loaded successfully (never call this for a broken one)."""
        key = self.key(info)
        entry = {
            "summary": description["summary"],
            # a list of pairs: the file is written with sorted keys, the signature's order must survive
            "parameters": [[k, v] for k, v in description["parameters"].items()],
            "stored": time.time(),
        }
        self._entries[key] = self._new[key] = entry
        self._used.add(key)

    def save(self) -> bool:
        """Write the new entries, merged with what other processes stored meanwhile; False if it cannot."""
        if not self._new:
            return True
        entries = {**self._read(), **self._new}
        if len(entries) > MAX_ENTRIES:
            others = sorted(
                (k for k in entries if k not in self._used),
                key=lambda k: entries[k].get("stored", 0) if isinstance(entries[k], dict) else 0,
                reverse=True,
            )
            keep = self._used | set(others[: max(0, MAX_ENTRIES - len(self._used))])
            entries = {k: v for k, v in entries.items() if k in keep}
        try:
            write_json(self.path, {"format": FORMAT, "entries": entries})
        except OSError:  # read-only or unwritable cache folder: the listing still works, uncached
            return False
        self._new.clear()
        return True
