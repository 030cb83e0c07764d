import json
import os
import subprocess
import sys
import time

import pytest

from usam import files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_respect_the_umask(tmp_path, umask_022):
    text = files.write_text_atomically(tmp_path / "a" / "b.txt", "hello")
    data = files.write_json_atomically({"x": 1}, tmp_path / "c.json")
    assert text.read_text() == "hello"
    assert json.loads(data.read_text()) == {"x": 1}
    assert (text.stat().st_mode & 0o777) == 0o644
    assert (data.stat().st_mode & 0o777) == 0o644
    os.umask(0o077)
    private = files.write_bytes_atomically(tmp_path / "d.bin", b"\x00")
    assert (private.stat().st_mode & 0o777) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = files.write_text_atomically(tmp_path / "keep.txt", "old")

    def crash_while_writing():
        with files.atomic_path(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        crash_while_writing()
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_json_is_strict():
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        files.json_text({"value": float("nan")})
    assert files.json_text([1, 2], indent=None) == "[1,2]\n"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    # A real process that dies: its pid is free afterwards.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "heads.safetensors"
    stale = tmp_path / (files.temporary_prefix(target).replace(f"-{os.getpid()}-", f"-{dead_pid}-") + "x.tmp")
    stale.write_bytes(b"half")
    alive = tmp_path / (files.temporary_prefix(target) + "y.tmp")  # this process: a concurrent writer
    alive.write_bytes(b"in progress")
    other_host = tmp_path / ".heads.safetensors.usam-otherhost-1-z.tmp"
    other_host.write_bytes(b"maybe in progress")
    old = tmp_path / ".heads.safetensors.usam-otherhost-2-w.tmp"
    old.write_bytes(b"abandoned")
    day_ago = time.time() - files.STALE_AFTER_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    user_file = tmp_path / ".notes.tmp"
    user_file.write_text("not usam's")

    removed = files.remove_stale_temporaries(tmp_path)

    assert sorted(removed) == sorted([stale, old])
    assert alive.exists()
    assert other_host.exists()
    assert user_file.exists()
    assert files.remove_stale_temporaries(tmp_path / "missing") == []


def test_writing_a_file_removes_its_stale_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp_path / "heads.safetensors"
    stale = tmp_path / (files.temporary_prefix(target).replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-") + "a.tmp")
    stale.write_bytes(b"half a heads file")
    other = tmp_path / (
        files.temporary_prefix(tmp_path / "other.json").replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-") + "b.tmp"
    )
    other.write_bytes(b"half of another file")
    files.write_bytes_atomically(target, b"whole")
    assert not stale.exists()
    assert other.exists()  # only the written file's own leftovers go
    assert target.read_bytes() == b"whole"
