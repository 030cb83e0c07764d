"""Turn a segmentation dataset into training data for the heads: tokens, targets and entropy baselines.

For each image and each model of a list (default sam2.1 tiny, small, base-plus, large) the image is encoded once
per image version, and all objects' prompts run in batches. One row per (image, object, model) goes into a
:mod:`usam.store` token store. Work splits into N disjoint shards by image key (``--shard I/N``), so N processes
(one per GPU, a SLURM array, torchrun) write into one store without coordination, and a killed run resumes where
it stopped.

Modules:
    extract: the job (:class:`Extractor`, :func:`run_extraction`, :func:`build_models`, :class:`ExtractionOptions`,
        :func:`parse_shard`).
    identity: what identifies the weights and data of a job, recorded in the store and checked on resume.
    targets: IoUs, the training targets, the one "best mask" rule and the Monte Carlo entropies.
    prompts: the paper's prompt sampling.
    augment: the image versions of the augmentation entropy.
"""

from usam.extraction.extract import (
    ACCELERATOR_PROMPT_BATCH,
    CPU_PROMPT_BATCH,
    IDENTITY_KEYS,
    ExtractionInterrupted,
    ExtractionOptions,
    Extractor,
    build_models,
    default_prompt_batch_size,
    extraction_metadata,
    parse_shard,
    run_extraction,
)
from usam.extraction.identity import data_identity, extraction_identity, file_sha256, weights_identity
from usam.models import DEFAULT_MODELS

__all__ = [
    "ACCELERATOR_PROMPT_BATCH",
    "CPU_PROMPT_BATCH",
    "DEFAULT_MODELS",
    "IDENTITY_KEYS",
    "ExtractionInterrupted",
    "ExtractionOptions",
    "Extractor",
    "build_models",
    "data_identity",
    "default_prompt_batch_size",
    "extraction_identity",
    "extraction_metadata",
    "file_sha256",
    "parse_shard",
    "run_extraction",
    "weights_identity",
]
