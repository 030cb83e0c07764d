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

from typing import ClassVar

from usam.datasets.base import DatasetFileError, PaletteVideoReader, read_json
from usam.errors import DatasetError

#: Canonical split -> folder and meta-file name used by MOSE.
_FOLDERS = {"train": "train", "val": "valid", "test": "test"}


class MoseReader(PaletteVideoReader):
    """MOSE frames and object masks. Splits: ``"train"``, ``"val"``/``"valid"``, ``"test"``.

    Image keys are ``"<video>/<frame stem>"``; object ids are palette indices (``"1"``).
    """

    name: ClassVar[str] = "mose"
    title: ClassVar[str] = "MOSE"
    split_names: ClassVar[dict[str, str] | None] = {"train": "train", "val": "val", "valid": "val", "test": "test"}

    def _open(self) -> None:
        """Find the split folder (``root/<folder>`` or ``root`` itself) and its meta file."""
        folder = _FOLDERS[self.split]
        split_folder = self.root / folder
        if not (split_folder / "JPEGImages").is_dir() and (self.root / "JPEGImages").is_dir():
            split_folder = self.root
        self.frame_folder = split_folder / "JPEGImages"
        self.annotation_folder = split_folder / "Annotations"
        self._require_folders(self.frame_folder, self.annotation_folder, what="MOSE folder")
        meta_name = f"meta_{folder}.json"
        candidates = [self.root / meta_name, split_folder / meta_name, split_folder.parent / meta_name]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            looked = ", ".join(str(path) for path in dict.fromkeys(candidates))
            raise DatasetError(f"MOSE meta file {meta_name} not found (looked at {looked}); {self.layout_hint()}")
        self.meta_file = self.video_list = found

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
