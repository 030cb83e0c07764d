"""The trained test-bed: a small, reproducible world in which usam's estimates can be measured without downloads.

Modules:

- :mod:`usam.testbed.prompts`: clicks and jittered boxes for training, and their click maps.
- :mod:`usam.testbed.model_training`: training SAM2-architecture models from scratch (checkpoints with model cards,
  resumable).
- :mod:`usam.testbed.model_quality`: checks through SAM2's normal predictor: prompt dependence, single-click mIoU.
"""

from usam.testbed.model_quality import ClickQuality, prompt_dependence, single_click_miou
from usam.testbed.model_training import TrainingConfig, learning_rate, model_card_path, train_testbed_model
from usam.testbed.prompts import PromptKind, TrainingPrompt, click_map, sample_training_prompt

__all__ = [
    "ClickQuality",
    "PromptKind",
    "TrainingConfig",
    "TrainingPrompt",
    "click_map",
    "learning_rate",
    "model_card_path",
    "prompt_dependence",
    "sample_training_prompt",
    "single_click_miou",
    "train_testbed_model",
]
