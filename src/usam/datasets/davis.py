"""DAVIS 2017 semi-supervised video object segmentation.

Layout (as extracted from ``DAVIS-2017-trainval-480p.zip`` and friends)::

    DAVIS/
      ImageSets/2017/train.txt, val.txt, test-dev.txt, test-challenge.txt   (one sequence name per line)
      JPEGImages/480p/<sequence>/00000.jpg ...
      Annotations/480p/<sequence>/00000.png ...   (palette PNG: index 0 background, 1.. objects, 255 void)
      JPEGImages/Full-Resolution/..., Annotations/Full-Resolution/...   (in the Full-Resolution downloads)

``root`` may be ``DAVIS`` itself or the folder containing it. Every frame with an annotation PNG is one sample
keyed ``"<sequence>/<frame stem>"`` (test-dev and test-challenge annotate only the first frame); every palette
index except 0 and 255 is one object, keyed by the index.

The resolution is chosen with ``resolution=`` (command line: ``--davis-resolution {480p,Full-Resolution}``).
480p is the default because it is the standard DAVIS 2017 trainval download; the paper's authors read
Full-Resolution, which the command line's ``--preset paper`` selects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from usam.datasets.base import PaletteVideoReader, SelectionOptions, read_name_list
from usam.errors import DatasetError, InvalidInputError

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Frame resolutions DAVIS is distributed in.
RESOLUTIONS = ("480p", "Full-Resolution")


class DavisReader(PaletteVideoReader):
    """DAVIS 2017 frames and object masks.

    Splits are the lists in ``ImageSets/2017``: ``"train"``, ``"val"``, ``"test-dev"``, ``"test-challenge"``.
    Image keys are ``"<sequence>/<frame stem>"`` (``"bear/00012"``); object ids are palette indices (``"2"``).
    """

    name: ClassVar[str] = "davis"

    def __init__(
        self, root: str | Path, split: str, *, resolution: str = "480p", **selection: Unpack[SelectionOptions]
    ) -> None:
        """Check the arguments and the layout.

        Args:
            root: ``DAVIS`` folder or its parent.
            split: Name of a sequence list in ``ImageSets/2017``.
            resolution: ``"480p"`` or ``"Full-Resolution"``.
            **selection: ``every`` (applied within each sequence), ``start``, ``stop``, ``limit``; see
                :class:`~usam.datasets.base.DatasetReader`.

        Raises:
            InvalidInputError: Unknown resolution, or a selection option is out of range.
            DatasetError: The sequence list or the frame/annotation folders of the resolution do not exist.
        """
        if resolution not in RESOLUTIONS:
            raise InvalidInputError(f"DAVIS resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        self.resolution = resolution
        super().__init__(root, split, **selection)

    def _open(self) -> None:
        """Find the sequence list (under ``root`` or ``root/DAVIS``) and the folders of the resolution."""
        base = self.root / "DAVIS" if (self.root / "DAVIS" / "ImageSets").is_dir() else self.root
        self.sequence_list = self.video_list = base / "ImageSets" / "2017" / f"{self.split}.txt"
        self.frame_folder = base / "JPEGImages" / self.resolution
        self.annotation_folder = base / "Annotations" / self.resolution
        if not self.sequence_list.is_file():
            available = sorted(path.stem for path in self.sequence_list.parent.glob("*.txt"))
            known = f" (found: {', '.join(available)})" if available else ""
            raise DatasetError(f"DAVIS sequence list {self.sequence_list} does not exist{known}; {self.layout_hint()}")
        for required in (self.frame_folder, self.annotation_folder):
            if not required.is_dir():
                raise DatasetError(f"DAVIS folder {required} does not exist; {self._resolution_hint(base)}")

    def _resolution_hint(self, base: Path) -> str:
        """What to do when the folders of the chosen resolution are missing, naming the one that is there if any."""
        present = [
            resolution
            for resolution in RESOLUTIONS
            if (base / "JPEGImages" / resolution).is_dir() and (base / "Annotations" / resolution).is_dir()
        ]
        if present:
            return (
                f"this DAVIS has {present[0]}: choose it with --davis-resolution {present[0]} "
                f'(resolution="{present[0]}" in Python), or download the {self.resolution} frames and annotations'
            )
        return (
            f"download the {self.resolution} frames and annotations, or choose the resolution you have with "
            f"--davis-resolution {{{','.join(RESOLUTIONS)}}} (resolution= in Python)"
        )

    @classmethod
    def layout_hint(cls) -> str:
        """Expected layout, for error messages."""
        return (
            "expected DAVIS 2017 as root/ImageSets/2017/<split>.txt, root/JPEGImages/<resolution>/<sequence>/"
            "00000.jpg and root/Annotations/<resolution>/<sequence>/00000.png"
        )

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", resolution={self.resolution!r})"

    def _videos(self) -> list[str]:
        return read_name_list(self.sequence_list, what="DAVIS sequence list")
