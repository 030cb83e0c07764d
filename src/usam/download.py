"""Checkpoint downloads into a cache folder: progress bar, atomic writes, clear errors without network.

The cache folder is ``$USAM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/usam``, else ``~/.cache/usam``.
A download is written to a hidden temporary file next to its target (:func:`usam.files.atomic_path`) and renamed
only when complete (and of the announced length), so an interrupted download never leaves a file that looks
complete; the file gets the mode the umask gives new files.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from usam.errors import CheckpointError, DownloadError
from usam.files import atomic_path, remove_stale_temporaries
from usam.models import SAM2ModelSpec

CACHE_ENVIRONMENT_VARIABLE = "USAM_CACHE_DIR"
_CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    """The folder that downloads are cached in (not created)."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "usam"


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        hint = f" (set ${CACHE_ENVIRONMENT_VARIABLE} to a folder)" if _is_under_cache(folder) else ""
        reason = "a file is in the way" if isinstance(error, (FileExistsError, NotADirectoryError)) else error.strerror
        raise DownloadError(f"cannot create the folder {folder}: {reason}{hint}") from None


def _is_under_cache(folder: Path) -> bool:
    cache = cache_dir()
    return folder == cache or cache in folder.parents


def download_file(
    url: str, destination: str | os.PathLike[str], *, progress: bool = True, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``destination`` atomically, showing a progress bar.

    Raises:
        DownloadError: The server could not be reached, answered with an error, or the transfer ended early.
            ``destination`` is then untouched. Also when its folder cannot be created.
    """
    from tqdm.auto import tqdm

    destination = Path(destination)
    _make_folder(destination.parent)
    remove_stale_temporaries(destination.parent, destination.name)
    with atomic_path(destination) as temporary, open(temporary, "wb") as output:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as error:
            raise DownloadError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(f"cannot reach {url} ({reason})") from None
        with response:
            length_header = response.headers.get("Content-Length")
            expected = int(length_header) if length_header and length_header.isdigit() else None
            received = 0
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=destination.name,
                disable=not progress,
            ) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK_BYTES)
                    except (OSError, urllib.error.URLError) as error:
                        raise DownloadError(
                            f"downloading {url} was interrupted after {received} bytes ({error})"
                        ) from None
                    if not chunk:
                        break
                    output.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise DownloadError(f"downloading {url} ended after {received} of {expected} bytes")
        output.flush()
        os.fsync(output.fileno())
    return destination


def resolve_checkpoint(
    spec: SAM2ModelSpec,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Find the checkpoint of a released model, downloading it into the cache on first use.

    Args:
        spec: The model.
        checkpoint: A local checkpoint file; skips the lookup and the download.
        checkpoint_dir: A folder holding official checkpoints under their official names
            (e.g. ``sam2.1_hiera_tiny.pt``); looked in before the cache.
        download: Download into the cache when no local file is found.
        progress: Show a progress bar while downloading.

    Raises:
        CheckpointError: A given file or folder does not exist, or the file is not found and ``download`` is off.
        DownloadError: The download failed; the message says how to pass a local file instead.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        return path
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {folder} does not exist")
        path = folder / spec.checkpoint_name
        if not path.is_file():
            raise CheckpointError(f"{spec.name}: {path} not found (the folder must hold the official file names)")
        return path
    cached = cache_dir() / "checkpoints" / spec.checkpoint_name
    if cached.is_file():
        return cached
    if not download:
        raise CheckpointError(f"{spec.name}: no checkpoint at {cached}; pass one with --checkpoint PATH")
    try:
        return download_file(spec.url, cached, progress=progress)
    except DownloadError as error:
        raise DownloadError(
            f"{error}. Download {spec.url} (or the Hugging Face model {spec.hf_id}) on a machine with network and "
            f"pass it with --checkpoint PATH (Python: checkpoint=PATH), or copy it to {cached}"
        ) from None
