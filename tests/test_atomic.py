"""Atomic writes: all or nothing, and files readable like any other (shipped weights too)."""

from __future__ import annotations

import os

import pytest

from lorasynth.atomic import atomic_path, write_bytes_atomic, write_json_atomic


def test_written_files_get_the_mode_open_would_give(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    target = tmp_path / "w.bin"
    write_bytes_atomic(target, b"abc")
    # mkstemp's 0600 would make shipped weights unreadable to other users of a checkout
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"abc")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "w.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a fi")  # a write that dies midway
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["w.json"]
