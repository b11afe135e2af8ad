"""Atomic output: a failed write leaves the previous file whole and no temporary behind."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.atomic import read_json, write_json, write_text, write_with


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    write_json(target, {"accuracy": 0.9})

    def crashes(tmp):
        tmp.write_text('{"accuracy": 0.')  # half written, then the writer dies
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_with(target, crashes)
    assert read_json(target) == {"accuracy": 0.9}
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_outputs_get_the_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "model.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
