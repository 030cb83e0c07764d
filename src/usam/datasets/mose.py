"""MOSE (coMplex video Object SEgmentation), v1 and v2.

Layout (as extracted from ``train.tar.gz`` / ``valid.tar.gz`` next to the meta files)::

    root/
      meta_train.json, meta_valid.json      ({"videos": {"<video>": {"objects": {...}, "length": ...}, ...}})
      train/JPEGImages/<video>/00000.jpg ...
      train/Annotations/<video>/00000.png ...   (palette PNG like DAVIS: 0 background, 1.. objects)
      valid/JPEGImages/..., valid/Annotations/<video>/00000.png   (valid annotates only the first frame)

``root`` may also be the split folder itself (holding ``JPEGImages`` and ``Annotations``), with the meta file
in it or next to it. Videos are taken from the meta file, frames from the annotation PNGs present: every
annotated frame is one sample keyed ``"<video>/<frame stem>"``; every palette index except 0 (and 255) is
one object.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from usam.datasets.base import DatasetFileError, PaletteVideoReader, read_json
from usam.errors import DatasetError

#: Accepted split names -> (canonical split, folder and meta-file name used by MOSE).
_SPLITS = {
    "train": ("train", "train"),
    "val": ("val", "valid"),
    "valid": ("val", "valid"),
    "test": ("test", "test"),
}


class MoseReader(PaletteVideoReader):
    """MOSE frames and object masks. Splits: ``"train"``, ``"val"``/``"valid"``, ``"test"``.

    Image keys are ``"<video>/<frame stem>"``; object ids are palette indices (``"1"``).
    """

    name: ClassVar[str] = "mose"

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        every: int = 1,
        start: int = 0,
        stop: int | None = None,
        limit: int | None = None,
    ) -> None:
        """Find the split folder and its meta file.

        Raises:
            DatasetError: Unknown split, or the split folder or meta file does not exist.
        """
        if split not in _SPLITS:
            raise DatasetError(f"MOSE has no split {split!r}; use one of {', '.join(_SPLITS)}")
        canonical_split, folder = _SPLITS[split]
        super().__init__(root, canonical_split, every=every, start=start, stop=stop, limit=limit)
        if (self.root / folder / "JPEGImages").is_dir():
            split_folder = self.root / folder
        elif (self.root / "JPEGImages").is_dir():
            split_folder = self.root
        else:
            raise DatasetError(f"MOSE folder {self.root / folder / 'JPEGImages'} does not exist; {self.layout_hint()}")
        self.frame_folder = split_folder / "JPEGImages"
        self.annotation_folder = split_folder / "Annotations"
        if not self.annotation_folder.is_dir():
            raise DatasetError(f"MOSE folder {self.annotation_folder} does not exist; {self.layout_hint()}")
        meta_name = f"meta_{folder}.json"
        candidates = [self.root / meta_name, split_folder / meta_name, split_folder.parent / meta_name]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            looked = ", ".join(str(path) for path in dict.fromkeys(candidates))
            raise DatasetError(f"MOSE meta file {meta_name} not found (looked at {looked}); {self.layout_hint()}")
        self.meta_file = found

    @classmethod
    def layout_hint(cls) -> str:
        """Expected layout, for error messages."""
        return (
            "expected MOSE as root/meta_<train|valid>.json with "
            "root/<train|valid>/JPEGImages/<video>/00000.jpg "
            "and root/<train|valid>/Annotations/<video>/00000.png"
        )

    def _videos(self) -> list[str]:
        meta = read_json(self.meta_file, what="MOSE meta file")
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise DatasetFileError(self.meta_file, 'has no "videos" object; it is not a MOSE meta file')
        # Sorted rather than in file order so that keys do not depend on how the json was written.
        return sorted(videos)
