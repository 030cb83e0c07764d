"""The extraction job: run SAM2 models over a dataset and write tokens, targets and entropy baselines to a store.

For each image and each model of a list (default sam2.1 tiny, small, base-plus, large) the image is encoded once
per image version, and all objects' prompts run in batches. One row per (image, object, model) goes into a
:mod:`usam.store` token store; see :mod:`usam.extraction.targets` for what the targets and entropies mean.

Work splits into N disjoint shards by image key (``--shard I/N``), so N processes (one per GPU, a SLURM array,
torchrun) write into one store without coordination, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam import __version__, sam2_adapter
from usam.datasets import DatasetReader, Sample
from usam.devices import Precision
from usam.errors import DatasetError, InvalidInputError
from usam.extraction.augment import AUGMENTATIONS, augmented_images
from usam.extraction.identity import extraction_identity
from usam.extraction.prompts import ObjectPrompts, sample_prompts
from usam.extraction.targets import MonteCarloEntropies, mask_ious
from usam.model_card import ModelCard, resolve_model
from usam.models import SAM2ModelSpec, size_and_family
from usam.predictor import UncertainSAM
from usam.presets import PRESETS, Preset, TieRule
from usam.signals import PromptSignals
from usam.store import SIGNAL_COLUMNS, StoreWriter, TokenDtype, shard_of_key
from usam.validation import check_choice, check_int

logger = logging.getLogger(__name__)

CPU_PROMPT_BATCH = 2
"""Prompts per decoder call on a CPU for 1024-pixel models. SAM2's decoder copies the image embedding and its
high-resolution features for every prompt of a call, so on a CPU a large call spills out of the caches: measured on a
2-core EPYC at 1024 px (sam2.1 tiny, medians), 58, 61, 73, 99 and 111 ms per prompt in calls of 1, 2, 4, 8 and 32
prompts."""
CPU_MAX_PROMPT_BATCH = 64
"""Most prompts per decoder call on a CPU. Smaller models copy smaller features per prompt, so more prompts fit the
caches and per-call overhead dominates: at 128 px (the test-bed's models, 2 threads) a Monte Carlo extraction took
107, 52 and 45 s in calls of 2, 16 and 64 prompts."""
ACCELERATOR_PROMPT_BATCH = 32
REFERENCE_INPUT_SIZE = 1024
"""Input side of Meta's releases, at which :data:`CPU_PROMPT_BATCH` was measured."""


def default_prompt_batch_size(device: torch.device | str, input_size: int = REFERENCE_INPUT_SIZE) -> int:
    """Prompts per decoder call that suit a device and a model's input side.

    On a CPU the batch grows with the inverse area of the features a prompt copies: :data:`CPU_PROMPT_BATCH` at
    1024 px, up to :data:`CPU_MAX_PROMPT_BATCH` for small models; on an accelerator it is
    :data:`ACCELERATOR_PROMPT_BATCH`.

    Args:
        device: Where the model runs.
        input_size: Side of the model's (square) input in pixels.
    """
    if torch.device(device).type != "cpu":
        return ACCELERATOR_PROMPT_BATCH
    scaled = CPU_PROMPT_BATCH * (REFERENCE_INPUT_SIZE / max(int(input_size), 1)) ** 2
    return int(min(max(CPU_PROMPT_BATCH, round(scaled)), CPU_MAX_PROMPT_BATCH))


@dataclasses.dataclass
class ExtractionOptions:
    """What an extraction computes.

    Attributes:
        monte_carlo: Also run the Monte Carlo samples (eight single-point prompts on five image versions per
            model), which multiplies the cost; without it ``h_prompt``, ``h_augmentation`` and ``h_all`` stay
            null (``h_std``, ``h_theta`` and ``h_task`` need no extra runs and are always filled).
        seed: Seed of the prompt sampling and the image noise.
        prompt_batch_size: Prompts per decoder call; None picks :func:`default_prompt_batch_size` for the
            model's device. The rows do not depend on it.
        preset: Where ``precision`` and ``tie_rule`` take their defaults from (:data:`usam.presets.PRESETS`).
        precision: Number type SAM2 runs in (see :meth:`precision_on`); None: on a GPU the preset's (usam:
            bfloat16, paper: float32), elsewhere float32. An explicit precision is used on every device.
        tie_rule: Which of equally good masks is "the best" for the Monte Carlo picks; None: the preset's
            (usam: first, paper: last).

    After construction ``preset``, ``precision`` (unless None) and ``tie_rule`` are enum members, the tie rule's
    default filled in.
    """

    monte_carlo: bool = True
    seed: int = 0
    prompt_batch_size: int | None = None
    preset: Preset = Preset.USAM
    precision: Precision | None = None
    tie_rule: TieRule | None = None

    def __post_init__(self) -> None:
        check_int(self.prompt_batch_size, "prompt batch size", minimum=1, optional=True)
        check_int(self.seed, "seed")
        self.preset = check_choice(Preset, self.preset, "preset")
        defaults = PRESETS[self.preset]
        self.precision = None if self.precision is None else check_choice(Precision, self.precision, "precision")
        self.tie_rule = check_choice(TieRule, self.tie_rule or defaults.tie_rule, "tie rule")

    def precision_on(self, device: torch.device | str) -> Precision:
        """The precision SAM2 extracts in on ``device``: the explicit one, else the preset's on CUDA, else float32.

        Example:
            >>> ExtractionOptions(preset="paper").precision_on("cuda"), ExtractionOptions().precision_on("cpu")
            (<Precision.FLOAT32: 'float32'>, <Precision.FLOAT32: 'float32'>)
        """
        if self.precision is not None:
            return self.precision
        if torch.device(device).type == "cuda":
            return PRESETS[self.preset].extraction_precision
        return Precision.FLOAT32


@dataclasses.dataclass
class _PromptOutputs:
    """Outputs of one prompt kind for the B objects of an image, batch axis first."""

    sam_scores: np.ndarray  # (B, outputs)
    mask_ious: np.ndarray  # (B, outputs)
    low_res_logits: torch.Tensor  # (B, outputs, h, w)
    iou_token: np.ndarray | None = None  # (B, token_dim)
    mask_tokens: np.ndarray | None = None  # (B, num_mask_tokens, token_dim)
    signals: dict[str, np.ndarray] | None = None  # store signal column -> (B, ...), see usam.signals


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); without text, from torchrun (RANK, WORLD_SIZE) or a SLURM array, else (0, 1).

    Raises:
        InvalidInputError: If the text is not ``I/N`` with ``0 <= I < N``, or the environment names a shard only
            halfway (RANK without WORLD_SIZE, SLURM_ARRAY_TASK_ID without SLURM_ARRAY_TASK_COUNT, ...): running
            shard 0 of 1 there would repeat the whole job in every process.
    """
    if text:
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise InvalidInputError(f"--shard must look like I/N (e.g. 0/8), got {text!r}") from None
    elif "WORLD_SIZE" in environ or "RANK" in environ:
        index = _environ_int(environ, "RANK", "WORLD_SIZE")
        count = _environ_int(environ, "WORLD_SIZE", "RANK")
    elif "SLURM_ARRAY_TASK_ID" in environ or "SLURM_ARRAY_TASK_COUNT" in environ:
        offset = _environ_int({"SLURM_ARRAY_TASK_MIN": "0", **environ}, "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_ID")
        index = _environ_int(environ, "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT") - offset
        count = _environ_int(environ, "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID")
    else:
        return 0, 1
    if count < 1 or not 0 <= index < count:
        raise InvalidInputError(f"shard {index}/{count} is not valid: need 0 <= I < N")
    return index, count


def _environ_int(environ: Mapping[str, str], name: str, partner: str) -> int:
    """The whole number in environment variable ``name``, which must be set together with ``partner``."""
    if name not in environ:
        raise InvalidInputError(
            f"{partner} is set but {name} is not, so the shard of this process is unknown; set {name} too, or "
            "pass --shard I/N"
        )
    try:
        return int(environ[name])
    except ValueError:
        raise InvalidInputError(f"{name} must be a whole number, got {environ[name]!r}; or pass --shard I/N") from None


class Extractor:
    """Runs several SAM2 models over images and builds store rows.

    Args:
        models: Model name -> :class:`usam.UncertainSAM` without heads (its predictor is what matters). Their
            ``precision`` is set to ``options.precision``.
        options: What to compute.

    Raises:
        InvalidInputError: If there is no model, or the models' decoders differ in their token sizes.
    """

    def __init__(self, models: Mapping[str, UncertainSAM], options: ExtractionOptions | None = None) -> None:
        if not models:
            raise InvalidInputError("extraction needs at least one model")
        self.models = dict(models)
        self.options = options or ExtractionOptions()
        self._gap_models = _gap_model_pair(list(self.models))
        sizes = {
            name: (sam2_adapter.token_dim_of(model.predictor), sam2_adapter.num_mask_tokens_of(model.predictor))
            for name, model in self.models.items()
        }
        if len(set(sizes.values())) > 1:
            raise InvalidInputError(f"the models' decoders have different token sizes {sizes}; one store holds one")
        self.token_dim, self.num_mask_tokens = next(iter(sizes.values()))
        for model in self.models.values():
            model.precision = self.options.precision_on(model.device)

    def precision_used(self) -> Precision | dict[str, Precision]:
        """The precision SAM2 runs in, or one per model if they differ."""
        used = {
            name: sam2_adapter.effective_precision(model.device, model.precision) for name, model in self.models.items()
        }
        values = set(used.values())
        return values.pop() if len(values) == 1 else used

    def rows_for_sample(self, sample: Sample, *, prompts: Mapping[str, ObjectPrompts] | None = None) -> list[dict]:
        """All rows of one image: one per (object, model).

        Args:
            sample: The image and its ground-truth objects.
            prompts: Object id -> prompts to use instead of the paper's sampling.
        """
        object_ids = sorted(sample.masks)
        if not object_ids:
            return []
        if prompts is None:
            prompts = {
                object_id: sample_prompts(
                    sample.masks[object_id], seed=self.options.seed, image_key=sample.image_key, object_id=object_id
                )
                for object_id in object_ids
            }
        truth = np.stack([sample.masks[object_id] for object_id in object_ids])
        center = np.stack([prompts[object_id].center for object_id in object_ids])  # (B, 1, 2)
        dense = np.stack([prompts[object_id].dense for object_id in object_ids])  # (B, 8, 2)
        monte_carlo = self.options.monte_carlo
        images = (
            augmented_images(sample.image, seed=self.options.seed, image_key=sample.image_key)
            if monte_carlo
            else [sample.image]
        )
        num_prompts = dense.shape[1] if monte_carlo else 1
        accumulators = [
            MonteCarloEntropies(list(self.models), len(images), num_prompts, tie_rule=self.options.tie_rule)
            for _ in object_ids
        ]
        per_model: dict[str, tuple[_PromptOutputs, _PromptOutputs]] = {}
        for model_name, model in self.models.items():
            for image_index, image in enumerate(images):
                model.set_image(image)  # one encoder pass per (model, image version), shared by all objects
                if image_index == 0:
                    center_outputs = self._run(model, center, truth, with_tokens=True, with_signals=True)
                    dense_outputs = self._run(model, dense, truth, with_tokens=True)
                    per_model[model_name] = (center_outputs, dense_outputs)
                if monte_carlo:
                    # Eight single-point prompts (center first); the center one on the unchanged image is known.
                    singles = dense[:, 1:] if image_index == 0 else dense
                    outputs = self._run(model, singles.reshape(-1, 1, 2), np.repeat(truth, singles.shape[1], 0))
                    if image_index == 0:
                        outputs = _prepend_center(center_outputs, outputs, singles.shape[1])
                    else:
                        outputs = _group(outputs, dense.shape[1])
                else:
                    outputs = _group(center_outputs, 1)
                for index, accumulator in enumerate(accumulators):
                    accumulator.add(
                        model_name,
                        image_index,
                        outputs.low_res_logits[index],
                        torch.from_numpy(outputs.sam_scores[index]),
                        torch.from_numpy(outputs.mask_ious[index]),
                    )
        return self._rows(sample, object_ids, prompts, truth, per_model, accumulators)

    def _run(
        self,
        model: UncertainSAM,
        points: np.ndarray,
        truth: np.ndarray,
        with_tokens: bool = False,
        with_signals: bool = False,
    ) -> _PromptOutputs:
        """Run (B, N, 2) positive point prompts in batches; SAM2's own outputs, plus tokens and signals if asked.

        Tokens and signals come from the same decoder calls as the masks (hooks), never from extra calls.
        """
        chunks = []
        batch = self.options.prompt_batch_size or default_prompt_batch_size(model.device, model.input_size)
        for start in range(0, len(points), batch):
            coords = points[start : start + batch]
            labels = np.ones(coords.shape[:2], dtype=np.int32)
            signals = None
            if with_tokens:
                result = model.predict(
                    point_coords=coords, point_labels=labels, multimask_output=True, signals=with_signals
                )
                masks, scores, logits = result.masks, result.sam_scores, result.low_res_logits
                count = len(coords)
                tokens = (
                    result.iou_token.reshape(count, -1),
                    result.mask_tokens.reshape(count, self.num_mask_tokens, -1),
                )
                if with_signals:
                    # A single prompt's signals lose their batch axis like SAM2's outputs; this gives it back.
                    signals = PromptSignals.from_arrays(result.signals).as_arrays()
            else:
                masks, scores, logits = model.predict_masks(point_coords=coords, point_labels=labels)
                tokens = (None, None)
            count = len(coords)
            # SAM2 drops the batch axis of a single prompt; the outputs per prompt are the multimask ones.
            masks = masks.reshape(count, -1, *masks.shape[-2:])
            chunks.append(
                _PromptOutputs(
                    sam_scores=scores.reshape(count, -1),
                    mask_ious=mask_ious(masks, truth[start : start + batch]),
                    low_res_logits=torch.from_numpy(logits.reshape(count, -1, *logits.shape[-2:])),
                    iou_token=tokens[0],
                    mask_tokens=tokens[1],
                    signals=signals,
                )
            )
        return _PromptOutputs(
            sam_scores=np.concatenate([chunk.sam_scores for chunk in chunks]),
            mask_ious=np.concatenate([chunk.mask_ious for chunk in chunks]),
            low_res_logits=torch.cat([chunk.low_res_logits for chunk in chunks]),
            iou_token=np.concatenate([chunk.iou_token for chunk in chunks]) if with_tokens else None,
            mask_tokens=np.concatenate([chunk.mask_tokens for chunk in chunks]) if with_tokens else None,
            signals=(
                {name: np.concatenate([chunk.signals[name] for chunk in chunks]) for name in SIGNAL_COLUMNS}
                if with_signals
                else None
            ),
        )

    def _rows(
        self,
        sample: Sample,
        object_ids: list[str],
        prompts: Mapping[str, ObjectPrompts],
        truth: np.ndarray,
        per_model: dict[str, tuple[_PromptOutputs, _PromptOutputs]],
        accumulators: list[MonteCarloEntropies],
    ) -> list[dict]:
        height, width = sample.image.shape[:2]
        best_iou = {name: outputs[0].mask_ious.max(axis=1) for name, outputs in per_model.items()}
        rows = []
        for index, object_id in enumerate(object_ids):
            model_gap = None
            if self._gap_models is not None:
                small, large = self._gap_models
                model_gap = float(best_iou[large][index] - best_iou[small][index])
            for model_name, (center, dense) in per_model.items():
                iou = float(center.mask_ious[index].max())
                unsupervised_iou = float(center.mask_ious[index][center.sam_scores[index].argmax()])
                iou_dense_prompt = float(dense.mask_ious[index].max())
                rows.append(
                    {
                        "image_key": sample.image_key,
                        "object_id": object_id,
                        "dataset": sample.dataset,
                        "split": sample.split,
                        "model": model_name,
                        "image_height": height,
                        "image_width": width,
                        "object_area": int(truth[index].sum()),
                        "center_point": prompts[object_id].center.reshape(-1),
                        "extra_points": prompts[object_id].extra.reshape(-1),
                        "iou_token": center.iou_token[index],
                        "mask_tokens": center.mask_tokens[index],
                        "sam_scores": center.sam_scores[index],
                        "mask_ious": center.mask_ious[index],
                        "dense_sam_scores": dense.sam_scores[index],
                        "dense_mask_ious": dense.mask_ious[index],
                        "dense_iou_token": dense.iou_token[index],
                        "dense_mask_tokens": dense.mask_tokens[index],
                        "iou": iou,
                        "unsupervised_iou": unsupervised_iou,
                        "iou_dense_prompt": iou_dense_prompt,
                        "model_gap": model_gap,
                        "prompt_gap": iou_dense_prompt - iou,
                        "task_gap": iou - unsupervised_iou,
                        **accumulators[index].entropies(model_name, monte_carlo=self.options.monte_carlo),
                        **{name: values[index] for name, values in center.signals.items()},
                    }
                )
        return rows


def _gap_model_pair(model_names: Sequence[str]) -> tuple[str, str] | None:
    """The (tiny, large) models of one family among the names, for ``model_gap``; None if absent.

    A family is a release's version, or for model cards the name before its ``-<size>`` suffix
    (:func:`usam.models.size_and_family`), which is also how the evaluation pairs them.
    """
    members = {name: size_and_family(name) for name in model_names}
    for name, (size, family) in members.items():
        if size == "tiny":
            large = next((other for other, key in members.items() if key == ("large", family)), None)
            if large is not None:
                return name, large
    return None


def _group(outputs: _PromptOutputs, prompts_per_object: int) -> _PromptOutputs:
    """(B * P, ...) outputs -> (B, P, ...)."""

    def regroup(array: Any) -> Any:
        return array.reshape(-1, prompts_per_object, *array.shape[1:])

    return _PromptOutputs(
        sam_scores=regroup(outputs.sam_scores),
        mask_ious=regroup(outputs.mask_ious),
        low_res_logits=regroup(outputs.low_res_logits),
    )


def _prepend_center(center: _PromptOutputs, extra: _PromptOutputs, extra_per_object: int) -> _PromptOutputs:
    """Center outputs (B, ...) and extra single-point outputs (B * 7, ...) -> (B, 8, ...), center first."""
    grouped = _group(extra, extra_per_object)
    return _PromptOutputs(
        sam_scores=np.concatenate([center.sam_scores[:, None], grouped.sam_scores], axis=1),
        mask_ious=np.concatenate([center.mask_ious[:, None], grouped.mask_ious], axis=1),
        low_res_logits=torch.cat([center.low_res_logits[:, None], grouped.low_res_logits], dim=1),
    )


def build_models(
    models: Sequence[str | Path | SAM2ModelSpec | ModelCard],
    *,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    precision: Precision | str | None = None,
    **build_kwargs: Any,
) -> dict[str, UncertainSAM]:
    """Build each SAM2 model once (official checkpoints from a folder or the download cache, or a card's).

    Args:
        models: SAM2 model names, e.g. ``sam2.1-tiny``, model cards or their paths (:mod:`usam.model_card`),
            mixed as needed; each is keyed by its name.
        checkpoint_dir: Folder with the official checkpoints under their official names.
        device: Torch device (default: CUDA if available, else the CPU).
        precision: Number type of SAM2 on a GPU (see :class:`usam.UncertainSAM`).
        **build_kwargs: Passed to :func:`usam.sam2_adapter.build_sam2_model`.

    Raises:
        InvalidInputError: An unknown name, a bad card, or two models of one name.
    """
    built = {}
    for model in models:
        spec = resolve_model(model)
        if spec.name in built:
            raise InvalidInputError(f"two of the models are named {spec.name}; give each model its own name")
        # A card names its own checkpoint; checkpoint_dir serves the released models.
        sam_model = sam2_adapter.build_sam2_model(spec, device=device, checkpoint_dir=checkpoint_dir, **build_kwargs)
        built[spec.name] = UncertainSAM(sam2_adapter.make_image_predictor(sam_model), precision=precision)
    return built


class ExtractionInterrupted(KeyboardInterrupt):
    """The extraction was interrupted (Ctrl-C); every image finished before is in the store.

    Attributes:
        counts: The counts :func:`run_extraction` returns, up to the interruption.
        images_in_store: Images of this shard in the store now (finished in this run or before).
    """

    def __init__(self, counts: dict[str, int], images_in_store: int) -> None:
        super().__init__(f"interrupted; {images_in_store} images of this shard are in the store")
        self.counts = counts
        self.images_in_store = images_in_store


IDENTITY_KEYS = ("identity", "preset", "precision", "tie_rule")
"""Store metadata keys that usam records since the identity check; a store written before lacks them and resumes
with a warning that they cannot be checked."""


def run_extraction(
    reader: DatasetReader,
    models: Mapping[str, UncertainSAM],
    out: str | Path,
    *,
    options: ExtractionOptions | None = None,
    shard: tuple[int, int] = (0, 1),
    token_dtype: TokenDtype | str = TokenDtype.FLOAT32,
    rows_per_part: int = 2048,
    flush_seconds: float = 300.0,
    progress: bool = True,
    extra_metadata: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Extract every image of this shard that the store does not have yet; resumable.

    The store's metadata records the job's options and what identifies its inputs (each model's config,
    overrides and checkpoint SHA-256 or random-weight seed; the dataset, split, resolved root and selection), so
    that resuming with other weights or data is refused instead of mixing rows.

    Args:
        reader: The dataset.
        models: Model name -> UncertainSAM wrapper (see :func:`build_models`).
        out: Store folder.
        options: What to compute.
        shard: (index, count): this process handles the images whose key hashes to ``index``.
        token_dtype: ``float32`` or ``float16`` tokens.
        rows_per_part: Rows per Parquet part; smaller loses less work to a crash.
        flush_seconds: Also write a part when this long has passed since the last one.
        progress: Show a progress bar.
        extra_metadata: Recorded in the store's metadata.

    Returns:
        Counts: images done now, images done before, objects, rows, skipped images.

    Raises:
        ExtractionInterrupted: On Ctrl-C, after the finished images are written to the store.
        StoreError: If the store was written with other options, weights or data, or cannot be written.
    """
    from tqdm.auto import tqdm

    options = options or ExtractionOptions()
    shard_index, num_shards = shard
    extractor = Extractor(models, options)
    metadata = {
        "dataset": reader.name,
        "split": reader.split,
        "models": list(models),
        "seed": options.seed,
        "monte_carlo": options.monte_carlo,
        "augmentations": list(AUGMENTATIONS) if options.monte_carlo else ["unchanged"],
        "preset": str(options.preset),
        "precision": _json_precision(extractor.precision_used()),
        "tie_rule": str(options.tie_rule),
        "identity": extraction_identity(reader, models),
        **(extra_metadata or {}),
    }
    counts = {"images": 0, "images_before": 0, "objects": 0, "rows": 0, "skipped": 0}
    with StoreWriter(
        out,
        shard_index=shard_index,
        num_shards=num_shards,
        token_dtype=token_dtype,
        token_dim=extractor.token_dim,
        num_mask_tokens=extractor.num_mask_tokens,
        metadata=metadata,
        rows_per_part=rows_per_part,
        unchecked_if_missing=IDENTITY_KEYS,
    ) as writer:
        done = writer.completed_keys()
        keys = [key for key in reader.keys() if shard_of_key(key, num_shards) == shard_index]  # noqa: SIM118 (a method)
        todo = [key for key in keys if key not in done]
        counts["images_before"] = len(keys) - len(todo)
        bar = tqdm(
            total=len(keys),
            initial=counts["images_before"],
            desc=f"extract {reader.name}/{reader.split} shard {shard_index}/{num_shards}",
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            with bar:
                _extract_images(reader, todo, extractor, writer, counts, bar, flush_seconds)
        except KeyboardInterrupt:
            interrupted = True
        else:
            interrupted = False
    # Leaving the with block closed the writer, which wrote every finished image.
    if interrupted:
        raise ExtractionInterrupted(counts, len(writer.completed_keys())) from None
    if counts["skipped"]:
        logger.warning("%d image(s) could not be read and were skipped; rerun to retry them", counts["skipped"])
    return counts


def _extract_images(
    reader: DatasetReader,
    keys: Sequence[str],
    extractor: Extractor,
    writer: StoreWriter,
    counts: dict[str, int],
    bar: Any,
    flush_seconds: float,
) -> None:
    last_flush = time.monotonic()
    for key in keys:
        try:
            sample = reader.load(key)
        except DatasetError as error:
            counts["skipped"] += 1
            logger.warning("skipping image %s: %s", key, error)
            bar.update(1)
            continue
        rows = extractor.rows_for_sample(sample)
        writer.add_image(key, rows)
        counts["images"] += 1
        counts["objects"] += len(sample.masks)
        counts["rows"] += len(rows)
        bar.update(1)
        bar.set_postfix(objects=counts["objects"], skipped=counts["skipped"], refresh=False)
        if time.monotonic() - last_flush > flush_seconds:
            writer.flush()
            last_flush = time.monotonic()


def _json_precision(precision: Precision | dict[str, Precision]) -> str | dict[str, str]:
    if isinstance(precision, dict):
        return {name: str(value) for name, value in precision.items()}
    return str(precision)


def extraction_metadata(model_names: Iterable[str]) -> dict[str, Any]:
    """What to record about the software that made a store."""
    return {"usam_version": __version__, "torch_version": torch.__version__, "models_requested": list(model_names)}
