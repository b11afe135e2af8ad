"""Put a failed stage's previous outputs back where they were.

`dvc repro` deletes a stage's outputs before it runs the stage's command, and on failure leaves
`dvc.lock` as it was. So that a failed stage also leaves its previous outputs in place (and the next
`dvc repro` redoes only that stage), a stage that fails under DVC rebuilds the outputs `dvc.lock`
records for it from the DVC cache (``DVC_ROOT`` and ``DVC_STAGE`` say it runs under DVC). Outputs
kept out of the cache (``cache: false``, e.g. ``reports/metrics.json``) come back from git when the
committed file is the one `dvc.lock` records. Nothing here takes DVC's lock: it only reads the cache
and writes the stage's own outputs, which DVC has just removed.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.atomic import write_bytes


def _cache_dir(root: Path) -> Path:
    """The DVC cache folder (``cache.dir`` of .dvc/config.local or .dvc/config, else .dvc/cache)."""
    for name in ("config.local", "config"):
        config = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            config.read(root / ".dvc" / name)
        except configparser.Error:
            continue
        if config.has_option("cache", "dir"):
            return (root / ".dvc" / config.get("cache", "dir").strip("'\"")).resolve()
    return root / ".dvc" / "cache"


def _object(cache: Path, md5: str) -> Path | None:
    for base in (cache / "files" / "md5", cache):  # DVC 3 layout, then DVC 2's
        path = base / md5[:2] / md5[2:]
        if path.is_file():
            return path
    return None


def _from_git(root: Path, rel: str, md5: str) -> bytes | None:
    try:
        data = subprocess.run(
            ["git", "-C", str(root), "show", f"HEAD:{rel}"], capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return data if hashlib.md5(data).hexdigest() == md5 else None


def _restore_dir(cache: Path, listing: Path, target: Path) -> bool:
    entries = json.loads(listing.read_text())
    objects = [(_object(cache, e["md5"]), e["relpath"]) for e in entries]
    if any(obj is None for obj, _ in objects):
        return False
    staging = target.with_name(f".{target.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    for obj, rel in objects:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(obj, staging / rel)
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    staging.rename(target)
    return True


def _restore(root: Path, cache: Path, out: dict[str, Any]) -> bool:
    rel, md5 = out["path"], out.get("md5", "")
    target = root / rel
    obj = _object(cache, md5) if md5 else None
    if md5.endswith(".dir"):
        return obj is not None and _restore_dir(cache, obj, target)
    if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
        return True  # still there and unchanged
    data = obj.read_bytes() if obj is not None else _from_git(root, rel, md5)
    if data is None:
        return False
    if target.is_dir():
        shutil.rmtree(target)
    write_bytes(target, data)
    return True


def restore_previous(stage: str) -> tuple[list[str], list[str]]:
    """Rebuild the outputs ``dvc.lock`` records for ``stage``; (restored, not restorable) paths.

    Does nothing (returns two empty lists) unless this process is that stage run by DVC.
    """
    root = os.environ.get("DVC_ROOT")
    if not root or os.environ.get("DVC_STAGE") != stage:
        return [], []
    root_path = Path(root)
    try:
        lock = yaml.safe_load((root_path / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [], []
    outs = (lock.get("stages") or {}).get(stage, {}).get("outs", [])
    cache = _cache_dir(root_path)
    restored, missing = [], []
    for out in outs:
        try:
            ok = _restore(root_path, cache, out)
        except (OSError, ValueError, KeyError):
            ok = False
        (restored if ok else missing).append(out["path"])
    return restored, missing
