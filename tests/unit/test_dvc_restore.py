"""Restoring a failed stage's previous outputs from a DVC cache (the layout DVC 3 writes) and git."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import yaml

from pipeline.dvc_restore import restore_previous


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cache_object(root, data: bytes) -> str:
    digest = md5(data)
    path = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    """A repo whose dvc.lock records, for stage 'distill', a cached folder, a cached file and a
    `cache: false` file committed to git."""
    root = tmp_path
    files = {"model.safetensors": b"weights-v1", "history.csv": b"epoch,loss\n1,0.5\n"}
    listing = json.dumps([{"md5": cache_object(root, d), "relpath": n} for n, d in sorted(files.items())])
    dir_md5 = cache_object(root, listing.encode()) + ".dir"
    (root / ".dvc" / "cache" / "files" / "md5" / dir_md5[:2] / dir_md5[2:-4]).rename(
        root / ".dvc" / "cache" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    )
    gain, metrics = b'{"gain": 0.4}\n', b'{"accuracy": 0.91}\n'
    (root / "reports").mkdir()
    (root / "reports" / "metrics.json").write_bytes(metrics)
    for cmd in (["init", "-q"], ["add", "reports/metrics.json"], ["commit", "-qm", "metrics"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd],
            cwd=root,
            check=True,
            capture_output=True,
        )
    outs = [
        {"path": "models/student", "md5": dir_md5},
        {"path": "models/gain.json", "md5": cache_object(root, gain)},
        {"path": "reports/metrics.json", "md5": md5(metrics)},
        {"path": "models/lost.bin", "md5": md5(b"never cached")},
    ]
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"distill": {"outs": outs}}}))
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_STAGE", "distill")
    return root, files, gain, metrics


def test_restores_cached_folders_files_and_committed_uncached_files(dvc_repo):
    root, files, gain, metrics = dvc_repo
    (root / "reports" / "metrics.json").unlink()  # DVC removed every output before the stage ran
    (root / "models" / "student").mkdir(parents=True)
    (root / "models" / "student" / "partial.tmp").write_bytes(b"half-written by the failed run")
    restored, missing = restore_previous("distill")
    assert restored == ["models/student", "models/gain.json", "reports/metrics.json"]
    assert missing == ["models/lost.bin"]
    assert {p.name: p.read_bytes() for p in (root / "models" / "student").iterdir()} == files
    assert (root / "models" / "gain.json").read_bytes() == gain
    assert (root / "reports" / "metrics.json").read_bytes() == metrics


def test_only_under_dvc_and_only_for_the_running_stage(dvc_repo, monkeypatch):
    root, *_ = dvc_repo
    assert restore_previous("teacher") == ([], [])
    monkeypatch.delenv("DVC_ROOT")
    assert restore_previous("distill") == ([], [])
    assert not (root / "models").exists()


def test_a_committed_file_that_is_not_the_locked_one_is_not_restored(dvc_repo):
    root, *_ = dvc_repo
    (root / "reports" / "metrics.json").unlink()
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lock["stages"]["distill"]["outs"][2]["md5"] = md5(b"another run's metrics")
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    _, missing = restore_previous("distill")
    assert "reports/metrics.json" in missing and not (root / "reports" / "metrics.json").exists()
