"""Atomic writes: the whole new file or the old one, and no temporary left behind."""
from __future__ import annotations

import os
import stat

import pytest

from hardware_profiles.fileio import write_text_atomic


def test_replaces_the_whole_file_and_is_readable(tmp_path):
    p = tmp_path / "sub" / "plan.json"
    write_text_atomic(p, "old")
    assert write_text_atomic(p, "new ✓") == p
    assert p.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    assert os.listdir(p.parent) == ["plan.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "run.json"
    write_text_atomic(p, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(p, "new")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["run.json"]
