"""Plugin discovery through Python entry points.

Three steps, kept apart so that one broken plugin never hides the others:

1. **find** (:func:`find`): read entry-point metadata only, never import plugin code; sorted by name
   so behaviour is deterministic. Two distributions offering one name in one group are recorded as a
   conflict, which fails only when that name is used.
2. **load** (:meth:`PluginInfo.load`): import the selected plugin's module; an import error or a
   non-callable object is reported with distribution, entry point and exception.
3. **check** (:func:`check_kwargs`): the keyword arguments against the factory's signature (unknown
   ones fail listing the accepted ones). Building a selection is ``pipeline.selection``'s job.

The built-in plugins of this repository are registered in its ``pyproject.toml`` exactly as a third
party's would be.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pipeline.errors import PluginError

GROUPS = {
    "augmenters": "distillops.augmenters",
    "losses": "distillops.losses",
    "models": "distillops.models",
    "datasets": "distillops.datasets",
}


@dataclass(frozen=True)
class PluginInfo:
    """What entry-point metadata says about one plugin, without importing it."""

    group: str  # short group name: augmenters, losses, models or datasets
    name: str
    value: str  # "module:attr"
    distribution: str
    version: str
    conflicts: tuple[str, ...] = ()  # other "dist==version" offering the same name

    @property
    def provenance(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def entry_point(self) -> str:
        return f"{self.name} = {self.value}"

    @property
    def tag(self) -> str:
        """MLflow tag key for this plugin, e.g. ``plugins.losses.kd``."""
        return f"plugins.{self.group}.{self.name}"

    def load(self) -> Callable[..., Any]:
        """Import the plugin's module and return its factory."""
        if self.conflicts:
            offered = " and ".join(sorted((self.provenance, *self.conflicts)))
            raise PluginError(
                f"{self.group} plugin '{self.name}' is offered by more than one distribution: {offered}. "
                f"Uninstall one of them (pip uninstall <distribution>)."
            )
        return _load(self.group, self.name, self.value, self.distribution, self.version)


@cache
def _load(group: str, name: str, value: str, distribution: str, version: str) -> Callable[..., Any]:
    where = f"{GROUPS[group]} plugin '{name}' (entry point '{name} = {value}' of distribution {distribution}=={version})"
    try:
        obj = EntryPoint(name=name, value=value, group=GROUPS[group]).load()
    except Exception as exc:
        raise PluginError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise PluginError(
            f"{where} is not callable: it resolves to a {type(obj).__name__}, but a plugin entry point must "
            f"name a factory function or class"
        )
    return obj


def _group_key(group: str) -> str:
    if group not in GROUPS:
        raise PluginError(f"unknown plugin group '{group}'; groups are: {', '.join(GROUPS)}")
    return group


@cache
def _all_entry_points() -> Any:
    """Every installed distribution's entry points, read once per process (one scan of the metadata)."""
    return entry_points()


@cache
def _installed(group: str) -> dict[str, PluginInfo]:
    """The installed plugins of a group."""
    return _index(group, _all_entry_points().select(group=GROUPS[group]))


def rescan() -> None:
    """Forget what was found and loaded (after installing or removing a distribution in-process)."""
    _all_entry_points.cache_clear()
    _installed.cache_clear()
    _load.cache_clear()


def find(group: str, eps: Iterable[EntryPoint] | None = None) -> dict[str, PluginInfo]:
    """All plugins of a group, by name, sorted; metadata only.

    ``eps`` overrides the installed entry points (tests pass fake ones).
    """
    group = _group_key(group)
    if eps is None:
        return dict(_installed(group))
    return _index(group, eps)


def _index(group: str, eps: Iterable[EntryPoint]) -> dict[str, PluginInfo]:
    by_name: dict[str, dict[tuple[str, str], PluginInfo]] = {}
    for ep in eps:
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "<unknown distribution>"
        dist_version = dist.version if dist is not None else "0"
        info = PluginInfo(group, ep.name, ep.value, dist_name, dist_version)
        # the same distribution can be seen twice on sys.path (e.g. an editable install): keep one
        by_name.setdefault(ep.name, {})[(dist_name.lower(), ep.value)] = info
    found: dict[str, PluginInfo] = {}
    for name in sorted(by_name):
        infos = sorted(by_name[name].values(), key=lambda i: i.distribution.lower())
        dists = {i.distribution.lower() for i in infos}
        first = infos[0]
        if len(dists) > 1:
            others = tuple(i.provenance for i in infos[1:])
            first = PluginInfo(first.group, name, first.value, first.distribution, first.version, others)
        found[name] = first
    return found


def get(group: str, name: str, eps: Iterable[EntryPoint] | None = None) -> PluginInfo:
    plugins = find(group, eps)
    if name not in plugins:
        close = difflib.get_close_matches(name, list(plugins), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        available = ", ".join(plugins) or "none installed"
        raise PluginError(f"unknown {group} plugin {name!r}.{hint} Available: {available}.")
    return plugins[name]


def accepted_keywords(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword names a factory takes, and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def check_kwargs(
    info: PluginInfo, factory: Callable[..., Any], kwargs: Mapping[str, Any], reserved: tuple[str, ...] = ()
) -> None:
    names, var_kw = accepted_keywords(factory)
    accepted = [n for n in names if n not in reserved]
    unknown = [k for k in kwargs if k not in accepted and not var_kw]
    if unknown:
        raise PluginError(
            f"{info.group} plugin '{info.name}' ({info.provenance}) does not take the keyword(s) "
            f"{', '.join(repr(k) for k in unknown)}; it accepts: {', '.join(accepted) or 'no keywords'}."
        )
    missing = (
        [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in reserved
            and p.name not in kwargs
        ]
        if names
        else []
    )
    if missing:
        raise PluginError(
            f"{info.group} plugin '{info.name}' ({info.provenance}) needs the keyword(s) "
            f"{', '.join(missing)}; add them to its entry in params.yaml."
        )


MODEL_ARGS = ("num_classes", "in_channels")
