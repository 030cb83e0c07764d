"""Turn a segmentation dataset into training data for the heads: tokens, targets and entropy baselines.

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

from usam import __version__
from usam.datasets import DatasetReader, Sample
from usam.errors import DatasetError, InvalidInputError
from usam.extraction.augment import AUGMENTATIONS, augmented_images
from usam.extraction.prompts import ObjectPrompts, sample_prompts
from usam.extraction.targets import MonteCarloEntropies, mask_ious
from usam.models import DEFAULT_MODELS, SAM2ModelSpec, get_model_spec
from usam.predictor import UncertainSAM

logger = logging.getLogger(__name__)

CPU_PROMPT_BATCH = 2
"""Prompts per decoder call on a CPU. SAM2's decoder copies the image embedding and its high-resolution features
for every prompt of a call, so on a CPU a large call spills out of the caches: measured on a 2-core EPYC at 1024 px
(sam2.1 tiny, medians), 58, 61, 73, 99 and 111 ms per prompt in calls of 1, 2, 4, 8 and 32 prompts."""
ACCELERATOR_PROMPT_BATCH = 32
"""Prompts per decoder call on a GPU, where larger calls keep the device busy; also bounds the memory of the
full-resolution masks (B x 3 x H x W)."""


def default_prompt_batch_size(device: torch.device | str) -> int:
    """Prompts per decoder call that suit a device: small on a CPU, larger on an accelerator."""
    return CPU_PROMPT_BATCH if torch.device(device).type == "cpu" else ACCELERATOR_PROMPT_BATCH


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
    """

    monte_carlo: bool = True
    seed: int = 0
    prompt_batch_size: int | None = None

    def __post_init__(self) -> None:
        batch = self.prompt_batch_size
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise InvalidInputError(f"prompt batch size must be a whole number >= 1, got {batch!r}")


@dataclasses.dataclass
class _PromptOutputs:
    """Outputs of one prompt kind for the B objects of an image, batch axis first."""

    sam_scores: np.ndarray  # (B, 3)
    mask_ious: np.ndarray  # (B, 3)
    low_res_logits: torch.Tensor  # (B, 3, h, w)
    iou_token: np.ndarray | None = None  # (B, token_dim)
    mask_tokens: np.ndarray | None = None  # (B, num_mask_tokens, token_dim)


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); without text, from torchrun (RANK, WORLD_SIZE) or a SLURM array, else (0, 1)."""
    if text:
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise InvalidInputError(f"--shard must look like I/N (e.g. 0/8), got {text!r}") from None
    elif "WORLD_SIZE" in environ and "RANK" in environ:
        index, count = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    elif "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        offset = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        index, count = int(environ["SLURM_ARRAY_TASK_ID"]) - offset, int(environ["SLURM_ARRAY_TASK_COUNT"])
    else:
        return 0, 1
    if count < 1 or not 0 <= index < count:
        raise InvalidInputError(f"shard {index}/{count} is not valid: need 0 <= I < N")
    return index, count


class Extractor:
    """Runs several SAM2 models over images and builds store rows.

    Args:
        models: Model name -> :class:`usam.UncertainSAM` without heads (its predictor is what matters).
        options: What to compute.
    """

    def __init__(self, models: Mapping[str, UncertainSAM], options: ExtractionOptions | None = None) -> None:
        if not models:
            raise InvalidInputError("extraction needs at least one model")
        self.models = dict(models)
        self.options = options or ExtractionOptions()
        self._gap_models = _gap_model_pair(list(self.models))

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
        accumulators = [MonteCarloEntropies(list(self.models), len(images), num_prompts) for _ in object_ids]
        per_model: dict[str, tuple[_PromptOutputs, _PromptOutputs]] = {}
        for model_name, model in self.models.items():
            for image_index, image in enumerate(images):
                model.set_image(image)  # one encoder pass per (model, image version), shared by all objects
                if image_index == 0:
                    center_outputs = self._run(model, center, truth, with_tokens=True)
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
        self, model: UncertainSAM, points: np.ndarray, truth: np.ndarray, with_tokens: bool = False
    ) -> _PromptOutputs:
        """Run (B, N, 2) positive point prompts in batches; tokens only when asked (raw predictor otherwise)."""
        chunks = []
        batch = self.options.prompt_batch_size or default_prompt_batch_size(model.predictor.device)
        for start in range(0, len(points), batch):
            coords = points[start : start + batch]
            labels = np.ones(coords.shape[:2], dtype=np.int32)
            if with_tokens:
                result = model.predict(point_coords=coords, point_labels=labels, multimask_output=True)
                masks, scores, logits = result.masks, result.sam_scores, result.low_res_logits
                iou_token, mask_tokens = result.iou_token, result.mask_tokens
                tokens = (iou_token.reshape(-1, iou_token.shape[-1]), mask_tokens.reshape(-1, *mask_tokens.shape[-2:]))
            else:
                masks, scores, logits = model.predictor.predict(
                    point_coords=coords, point_labels=labels, multimask_output=True
                )
                tokens = (None, None)
            count = len(coords)
            masks = masks.reshape(count, 3, *masks.shape[-2:])
            chunks.append(
                _PromptOutputs(
                    sam_scores=scores.reshape(count, 3),
                    mask_ious=mask_ious(masks, truth[start : start + batch]),
                    low_res_logits=torch.from_numpy(logits.reshape(count, 3, *logits.shape[-2:])),
                    iou_token=tokens[0],
                    mask_tokens=tokens[1],
                )
            )
        return _PromptOutputs(
            sam_scores=np.concatenate([chunk.sam_scores for chunk in chunks]),
            mask_ious=np.concatenate([chunk.mask_ious for chunk in chunks]),
            low_res_logits=torch.cat([chunk.low_res_logits for chunk in chunks]),
            iou_token=np.concatenate([chunk.iou_token for chunk in chunks]) if with_tokens else None,
            mask_tokens=np.concatenate([chunk.mask_tokens for chunk in chunks]) if with_tokens else None,
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
                    }
                )
        return rows


def _gap_model_pair(model_names: Sequence[str]) -> tuple[str, str] | None:
    """The (tiny, large) models of one version among the names, for ``model_gap``; None if absent."""
    specs = [get_model_spec(name) for name in model_names]
    for spec in specs:
        if spec.size == "tiny":
            large = next((other for other in specs if other.version == spec.version and other.size == "large"), None)
            if large is not None:
                names = {get_model_spec(name).name: name for name in model_names}
                return names[spec.name], names[large.name]
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
    model_names: Sequence[str],
    *,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    **build_kwargs: Any,
) -> dict[str, UncertainSAM]:
    """Build each SAM2 model once (official checkpoints from a folder or the download cache)."""
    from usam import sam2_adapter

    models = {}
    for name in model_names:
        spec: SAM2ModelSpec = get_model_spec(name)
        sam_model = sam2_adapter.build_sam2_model(spec, device=device, checkpoint_dir=checkpoint_dir, **build_kwargs)
        models[spec.name] = UncertainSAM(sam2_adapter.make_image_predictor(sam_model))
    return models


def run_extraction(
    reader: DatasetReader,
    models: Mapping[str, UncertainSAM],
    out: str | Path,
    *,
    options: ExtractionOptions | None = None,
    shard: tuple[int, int] = (0, 1),
    token_dtype: str = "float32",
    rows_per_part: int = 2048,
    flush_seconds: float = 300.0,
    progress: bool = True,
    extra_metadata: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Extract every image of this shard that the store does not have yet; resumable.

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
    """
    from tqdm.auto import tqdm

    from usam.store import StoreWriter, shard_of_key

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
        **(extra_metadata or {}),
    }
    counts = {"images": 0, "images_before": 0, "objects": 0, "rows": 0, "skipped": 0}
    with StoreWriter(
        out,
        shard_index=shard_index,
        num_shards=num_shards,
        token_dtype=token_dtype,
        metadata=metadata,
        rows_per_part=rows_per_part,
    ) as writer:
        done = writer.completed_keys()
        keys = [key for key in reader.keys() if shard_of_key(key, num_shards) == shard_index]  # noqa: SIM118 (a method)
        todo = [key for key in keys if key not in done]
        counts["images_before"] = len(keys) - len(todo)
        last_flush = time.monotonic()
        bar = tqdm(
            total=len(keys),
            initial=counts["images_before"],
            desc=f"extract {reader.name}/{reader.split} shard {shard_index}/{num_shards}",
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
        )
        with bar:
            for key in todo:
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
    if counts["skipped"]:
        logger.warning("%d image(s) could not be read and were skipped; rerun to retry them", counts["skipped"])
    return counts


def extraction_metadata(model_names: Iterable[str]) -> dict[str, Any]:
    """What to record about the software that made a store."""
    return {"usam_version": __version__, "torch_version": torch.__version__, "models_requested": list(model_names)}


__all__ = [
    "DEFAULT_MODELS",
    "ExtractionOptions",
    "Extractor",
    "build_models",
    "default_prompt_batch_size",
    "extraction_metadata",
    "parse_shard",
    "run_extraction",
]
