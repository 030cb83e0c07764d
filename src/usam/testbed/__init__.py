"""The trained test-bed: a small, reproducible world in which usam's estimates can be measured without downloads.

Modules:

- :mod:`usam.testbed.scenes`: seeded synthetic scenes that are ambiguous by construction (objects with nested
  parts), and the ``folder`` dataset written from them with a label of each target's kind.
- :mod:`usam.testbed.prompts`: clicks and jittered boxes for training test-bed models, and their click maps.
- :mod:`usam.testbed.model_training`: training SAM2-architecture models from scratch (checkpoints with model cards,
  resumable).
- :mod:`usam.testbed.model_quality`: checks through SAM2's normal predictor: prompt dependence, single-click mIoU.
- :mod:`usam.testbed.pipeline`: ``usam testbed build`` (scenes and the three models, cached) and ``usam testbed run``
  (extraction, heads per seed, evaluation, the results page with bootstrap intervals).
"""

from usam.testbed.model_quality import ClickQuality, prompt_dependence, single_click_miou
from usam.testbed.model_training import TrainingConfig, learning_rate, model_card_path, train_testbed_model
from usam.testbed.pipeline import TestbedPaths, TestbedSettings, build_testbed, run_testbed
from usam.testbed.prompts import PromptKind, TrainingPrompt, click_map, sample_training_prompt
from usam.testbed.scenes import (
    LABELS_FILE,
    MANIFEST_FILE,
    Scene,
    SceneObject,
    SceneTarget,
    Shape,
    TargetKind,
    Texture,
    make_scene,
    read_scene_labels,
    scene_name,
    scene_seed,
    write_scene_dataset,
)

__all__ = [
    "LABELS_FILE",
    "MANIFEST_FILE",
    "ClickQuality",
    "PromptKind",
    "Scene",
    "SceneObject",
    "SceneTarget",
    "Shape",
    "TargetKind",
    "TestbedPaths",
    "TestbedSettings",
    "Texture",
    "TrainingConfig",
    "TrainingPrompt",
    "build_testbed",
    "click_map",
    "learning_rate",
    "make_scene",
    "model_card_path",
    "prompt_dependence",
    "read_scene_labels",
    "run_testbed",
    "sample_training_prompt",
    "scene_name",
    "scene_seed",
    "single_click_miou",
    "train_testbed_model",
    "write_scene_dataset",
]
