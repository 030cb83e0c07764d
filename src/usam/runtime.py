"""Seconds per image of SAM2 with each uncertainty method, under usam's protocol or the paper's (Table 7).

Every variant segments one object from one click on an image that is encoded inside the timing:

- ``sam2``: ``set_image`` + ``predict`` (SAM2 alone, the reference);
- ``entropy``: SAM2 + the mask entropy of its masks;
- ``augmentations``: SAM2 on the five image versions (five encodings) + the entropy of the mean mask;
- ``prompts``: SAM2 with eight single-point prompts + the entropy of the mean mask;
- ``usam``: :class:`usam.UncertainSAM` with all loaded heads (one encoding, one call).

The two protocols (:class:`Protocol`) differ in how SAM2 is called and how time is summarised:

- ``usam``: SAM2's default three output masks (the most confident one is used), the eight prompts batched in one
  call, the five image versions made inside the timing (they are part of the method's cost); one run of each
  variant per round, rounds interleaved so that a drift of the machine hits all variants alike; the median.
- ``paper``: the protocol of the authors' runtime table: one output mask, eight sequential ``predict`` calls, the
  five image versions made once before any timing; each variant timed on its own, the mean over its iterations
  (50 by default) after its warm-up runs.

Every variant reaches SAM2 through the :class:`~usam.UncertainSAM` it is given (``set_image``, ``predict_masks``,
``predict``), so all of them run in that model's one inference context, at its precision.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from usam.devices import Precision
from usam.entropy import entropy_from_probabilities, mask_entropy
from usam.extraction.augment import augmented_images
from usam.predictor import UncertainSAM
from usam.validation import StrEnum, check_choice, check_int


class Protocol(StrEnum):
    """How the variants are run and timed (see the module docstring)."""

    USAM = "usam"
    """usam's own: three output masks, batched prompts, augmentations timed, interleaved rounds, median."""
    PAPER = "paper"
    """The paper's Table 7: one output mask, sequential prompts, augmentations prepared beforehand, mean."""


class Variant(StrEnum):
    """SAM2 alone and with each uncertainty method."""

    SAM2 = "sam2"
    ENTROPY = "entropy"
    AUGMENTATIONS = "augmentations"
    PROMPTS = "prompts"
    USAM = "usam"


VARIANTS: tuple[Variant, ...] = tuple(Variant)
MONTE_CARLO_PROMPTS = 8
"""Single-point prompts of the ``prompts`` variant: the centre of the image and seven random points."""
DEFAULT_ITERATIONS: dict[Protocol, int] = {Protocol.USAM: 3, Protocol.PAPER: 50}
"""Timed runs per variant when none are given: usam's former default, and the paper's 50."""
DEFAULT_WARMUP = 1
"""Untimed runs per variant before the timed ones (the first calls allocate memory and pick kernels)."""
CPU = torch.device("cpu")
Key = TypeVar("Key")


@dataclasses.dataclass(frozen=True)
class RuntimeMeasurement:
    """Seconds per image of each variant under one protocol.

    Attributes:
        protocol: How the variants were run and timed.
        precision: What SAM2 ran in (the model's precision).
        iterations: Timed runs per variant.
        warmup: Untimed runs per variant before them.
        seconds_per_image: Seconds of each measured variant (median or mean, see :attr:`statistic`).
    """

    protocol: Protocol
    precision: Precision
    iterations: int
    warmup: int
    seconds_per_image: dict[Variant, float]

    @property
    def statistic(self) -> str:
        """``median`` (usam protocol) or ``mean`` (paper protocol)."""
        return "median" if self.protocol is Protocol.USAM else "mean"

    def to_json(self) -> dict[str, Any]:
        """The measurement as plain JSON-ready values."""
        return {
            "protocol": str(self.protocol),
            "statistic": self.statistic,
            "precision": str(self.precision),
            "iterations": self.iterations,
            "warmup": self.warmup,
            "seconds_per_image": {str(name): seconds for name, seconds in self.seconds_per_image.items()},
        }


def measure_runtime(
    model: UncertainSAM,
    image: np.ndarray,
    *,
    protocol: Protocol | str = Protocol.USAM,
    iterations: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    variants: Sequence[Variant | str] = VARIANTS,
    seed: int = 0,
) -> RuntimeMeasurement:
    """Seconds per image of each variant, at the model's precision.

    Args:
        model: The wrapper; its heads are used by the ``usam`` variant, its precision by all.
        image: H x W x 3 uint8 RGB image.
        protocol: :class:`Protocol` to follow.
        iterations: Timed runs per variant; default :data:`DEFAULT_ITERATIONS` of the protocol.
        warmup: Untimed runs per variant before the timed ones.
        variants: Which of :data:`VARIANTS` to measure.
        seed: Seed of the prompt points and the image noise.

    Raises:
        InvalidInputError: An unknown protocol or variant, fewer than one iteration or a negative warm-up.
    """
    protocol = check_choice(Protocol, protocol, "protocol")
    chosen = [check_choice(Variant, variant, "variant") for variant in variants]
    if iterations is None:
        iterations = DEFAULT_ITERATIONS[protocol]
    iterations = check_int(iterations, "iterations", minimum=1)
    warmup = check_int(warmup, "warmup", minimum=0)
    functions = _variant_functions(model, image, protocol, seed)
    selected = {variant: functions[variant] for variant in dict.fromkeys(chosen)}
    timer = interleaved_medians if protocol is Protocol.USAM else _sequential_means
    with torch.no_grad():
        seconds = timer(selected, iterations, warmup, model.device)
    return RuntimeMeasurement(protocol, model.precision, iterations, warmup, seconds)


def prompt_points(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(8, 2) float32 points (x, y): the centre of a ``width`` x ``height`` image, then seven seeded random ones."""
    rng = np.random.default_rng(seed)
    centre = np.array([[width / 2, height / 2]])
    others = rng.uniform([0, 0], [width - 1, height - 1], size=(MONTE_CARLO_PROMPTS - 1, 2))
    return np.concatenate([centre, others]).astype(np.float32)


def _variant_functions(
    model: UncertainSAM, image: np.ndarray, protocol: Protocol, seed: int
) -> dict[Variant, Callable[[], Any]]:
    """One call of each variant; what differs between the protocols is decided here, once."""
    height, width = image.shape[:2]
    points = prompt_points(width, height, seed)
    centre, label = points[:1], np.ones(1, dtype=np.int32)
    multimask = protocol is Protocol.USAM

    def augmentations() -> list[np.ndarray]:
        return augmented_images(image, seed=seed, image_key="runtime")

    # The paper makes the image versions before timing; usam counts making them as part of the method.
    prepared = augmentations() if protocol is Protocol.PAPER else None

    def sam2_alone(version: np.ndarray = image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model.set_image(version)
        return model.predict_masks(point_coords=centre, point_labels=label, multimask_output=multimask)

    def with_entropy() -> torch.Tensor:
        return mask_entropy(torch.from_numpy(sam2_alone()[2]))

    def with_augmentations() -> torch.Tensor:
        versions = prepared if prepared is not None else augmentations()
        maps = [_most_confident_probabilities(*sam2_alone(version)[1:]) for version in versions]
        return entropy_from_probabilities(torch.stack(maps).mean(0))

    def with_prompts() -> torch.Tensor:
        model.set_image(image)
        if protocol is Protocol.USAM:
            _, scores, logits = model.predict_masks(
                point_coords=points[:, None], point_labels=np.ones((len(points), 1)), multimask_output=True
            )
            outputs = list(zip(scores, logits, strict=True))
        else:
            outputs = [
                model.predict_masks(point_coords=point[None], point_labels=label, multimask_output=False)[1:]
                for point in points
            ]
        maps = [_most_confident_probabilities(scores, logits) for scores, logits in outputs]
        return entropy_from_probabilities(torch.stack(maps).mean(0))

    def with_usam() -> Any:
        model.set_image(image)
        return model.predict(point_coords=centre, point_labels=label, multimask_output=multimask)

    return {
        Variant.SAM2: sam2_alone,
        Variant.ENTROPY: with_entropy,
        Variant.AUGMENTATIONS: with_augmentations,
        Variant.PROMPTS: with_prompts,
        Variant.USAM: with_usam,
    }


def _most_confident_probabilities(scores: np.ndarray, logits: np.ndarray) -> torch.Tensor:
    """Foreground probabilities of the mask SAM2 scores highest, from (M,) scores and (M, h, w) logits."""
    return torch.sigmoid(torch.from_numpy(logits[int(np.argmax(scores))]))


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that it is counted in the run that queued it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    functions: dict[Key, Callable[[], Any]], iterations: int, warmup: int = DEFAULT_WARMUP, device: torch.device = CPU
) -> dict[Key, float]:
    """Median seconds of each function, timed in rounds (one run of each per round) so drift hits all alike.

    Args:
        functions: What to time, by name.
        iterations: Timed rounds.
        warmup: Untimed rounds first.
        device: Where the functions queue work (CUDA work is waited for inside each timing).
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[Key, list[float]] = {name: [] for name in functions}
    for _ in range(iterations):
        for name, function in functions.items():
            _synchronize(device)
            started = time.perf_counter()
            function()
            _synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _sequential_means(
    functions: dict[Key, Callable[[], Any]], iterations: int, warmup: int, device: torch.device
) -> dict[Key, float]:
    """Mean seconds of each function: its warm-up runs, then its timed runs in one block, as the paper timed."""
    seconds = {}
    for name, function in functions.items():
        for _ in range(warmup):
            function()
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(iterations):
            function()
        _synchronize(device)
        seconds[name] = (time.perf_counter() - started) / iterations
    return seconds
