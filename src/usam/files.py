"""Writing files the way every usam artifact is written: atomically, with the user's umask, strict JSON.

Every file usam writes goes through :func:`atomic_path`: the content is written to a hidden temporary file in the
target's folder and renamed into place, so a crash never leaves half a file under the final name. Temporary files
carry the host and process that made them, so that a later run can remove those whose writer is gone
(:func:`remove_stale_temporaries`) without touching a concurrent writer's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMPORARY_SUFFIX = ".tmp"
# A temporary file older than this is stale whoever made it: no usam write takes a day.
STALE_AFTER_SECONDS = 24 * 3600
_TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.usam-(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)-[^.]*\.tmp$")
_UMASK_LOCK = threading.Lock()


def default_file_mode() -> int:
    """The mode a new file gets from the process's umask (``0o666 & ~umask``), as ``open()`` would create it."""
    # The umask can only be read by setting it; the lock keeps other threads of this process from seeing the 0.
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def _host_label() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def temporary_prefix(path: Path) -> str:
    """The name prefix of this process's temporary files for ``path`` (see :func:`remove_stale_temporaries`)."""
    return f".{path.name}.usam-{_host_label()}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Give a temporary path next to ``path``; on success rename it onto ``path``, on failure remove it.

    The final file gets the mode of a newly created file under the current umask (``tempfile`` alone would
    leave it 0600). Temporaries of the same file left by a writer that died are removed first.

    Args:
        path: The file to write. Its folder is created if needed.

    Yields:
        The temporary path to write to (it exists and is empty).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(target) as temporary:
        ...     _ = temporary.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    descriptor, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no ``NaN`` or ``Infinity`` literals, which strict parsers reject), ending with a newline.

    Raises:
        ValueError: If ``data`` holds a non-finite float; convert those to None (``null``) first.
    """
    separators = (",", ":") if indent is None else None
    return json.dumps(data, indent=indent, allow_nan=False, separators=separators, ensure_ascii=False) + "\n"


def write_json_atomically(data: Any, path: str | os.PathLike[str], *, indent: int | None = 2) -> Path:
    """Write ``data`` as strict JSON (see :func:`json_text`) to ``path`` atomically; returns the path."""
    return write_text_atomically(path, json_text(data, indent=indent))


def _writer_is_gone(host: str, pid: int) -> bool:
    if host != _host_label():
        return False  # another machine's process (shared file system): only age can tell
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_temporaries(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove usam's temporary files in ``folder`` whose writer has died (or that are older than a day).

    Args:
        folder: Folder to clean; nothing happens if it does not exist.
        name: Only the temporaries of this final file name (default: all of usam's temporaries in the folder).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for candidate in folder.iterdir():
        match = _TEMPORARY_NAME.match(candidate.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        try:
            old = now - candidate.stat().st_mtime > STALE_AFTER_SECONDS
        except FileNotFoundError:
            continue
        if old or _writer_is_gone(match["host"], int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed
