"""The random streams of a training run, each derived from the run's seed and what it is for.

A head's streams depend only on the seed and the head's name, so a head trains to the same weights whichever other
heads are trained with it, and two heads never share a stream.
"""

from __future__ import annotations

import enum

import numpy as np

from usam.head_table import HEAD_NAMES


class Stream(enum.IntEnum):
    """What a random stream is used for; the word that makes the streams of one run independent."""

    SPLIT = 1
    """The by-image train/validation split (one per run)."""
    INIT = 2
    """A head's initial weights."""
    SHUFFLE = 3
    """A head's order of rows in every epoch."""
    SEARCH = 4
    """A head's hyper-parameter search (the Optuna sampler)."""


def derived_seed(seed: int, stream: Stream, head: str | None = None) -> int:
    """A 64-bit seed for one stream of a run, and of one head for the per-head streams.

    Example:
        >>> derived_seed(0, Stream.INIT, "iou_tiny") != derived_seed(0, Stream.INIT, "iou_small")
        True
    """
    words = [seed, int(stream)] + ([] if head is None else [HEAD_NAMES.index(head)])
    # SeedSequence mixes the words well, so nearby seeds and heads give unrelated streams.
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])
