"""Training SAM2-architecture models from scratch on synthetic scenes: the test-bed's models.

The recipe (measured in a prototype; see the issue): AdamW (peak lr 8e-4, weight decay 0.05), linear warm-up then
cosine decay to 5 % of the peak, gradient-norm clip 1. Each step draws fresh scenes (8) and prompts per scene (8)
from :mod:`usam.testbed.prompts`, each for a target drawn uniformly among the scene's targets. The loss, at 64 px:
20 x focal + dice on the best of the three multimask outputs, plus output 0 (the single-mask token) on multi-click
and box prompts, plus the MSE of the IoU head against the real IoU of each of those masks.

The click map: from random weights, sparse prompts alone teach a model to ignore the prompt (the prototype's trap).
Early steps therefore also give the prompt densely through SAM's own mask-prompt input (see
:func:`usam.testbed.prompts.click_map`); each prompt gets it with a probability that is 1 at first and falls
linearly to 0 (:func:`click_map_probability`), so the model ends trained on, and prompted by, points and boxes alone, as
usam prompts every SAM2.

Every random draw of step s comes from ``(seed, s)``, so a resumed run continues exactly as an uninterrupted one.
Checkpoints are ordinary SAM2 checkpoints (``{"model": state_dict}``) with a JSON model card next to them
(:mod:`usam.model_card`: usam builds and prompts the model from it; the run's settings, steps and log are under its
``training``) and the optimizer's state in a third file for resuming. The model is handled only through
:mod:`usam.sam2_adapter.testbed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional

from usam.click_map import CLICK_MAP_AMPLITUDE, CLICK_MAP_SIGMA
from usam.errors import CheckpointError, UsamError
from usam.files import atomic_path
from usam.model_card import ClickMapPrompting, ModelCard, load_model_card, prompting_entry, save_model_card
from usam.sam2_adapter import testbed as sam2_testbed
from usam.testbed.prompts import (
    PromptKind,
    TrainingPrompt,
    click_map,
    sample_training_prompt,
)
from usam.validation import check_float, check_int

MODEL_CARD_SUFFIX = ".json"
RESUME_SUFFIX = ".resume.pt"
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


class SceneTargetLike(Protocol):
    """A target of a scene: its mask (bool, H x W)."""

    mask: np.ndarray


class SceneLike(Protocol):
    """A scene: an RGB uint8 image (H x W x 3) and its targets (``usam.testbed.scenes.Scene`` is one)."""

    image: np.ndarray
    targets: Sequence[SceneTargetLike]


SceneMaker = Callable[[int], SceneLike]


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Settings of one training run (all of them go into the model card).

    Attributes:
        size: ``tiny`` or ``large`` (:func:`usam.sam2_testbed.testbed_model_overrides`).
        steps: Length of the schedule, in optimizer steps.
        seed: Seed of the initial weights and of every scene and prompt.
        image_size: Side of the model input (and of the scenes).
        scenes_per_step: Fresh scenes per step.
        prompts_per_scene: Prompts per scene and step.
        peak_lr: Learning rate at the end of the warm-up.
        weight_decay: AdamW's weight decay.
        warmup_fraction: Share of the steps with a linearly rising learning rate.
        final_lr_fraction: Learning rate at the last step, as a fraction of the peak.
        grad_clip: Largest gradient norm.
        focal_weight: Weight of the focal loss next to the dice loss.
        iou_loss_weight: Weight of the IoU head's MSE.
        loss_size: Side at which the mask losses are computed.
        click_map_full_until: Share of the steps that all get the click map.
        click_map_off_from: Share of the steps after which none gets it (linear in between).
        checkpoint_every: Steps between checkpoints.
    """

    size: str = "tiny"
    steps: int = 850
    seed: int = 0
    image_size: int = 128
    scenes_per_step: int = 8
    prompts_per_scene: int = 8
    peak_lr: float = 8e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.04
    final_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    focal_weight: float = 20.0
    iou_loss_weight: float = 1.0
    loss_size: int = 64
    click_map_full_until: float = 0.25
    click_map_off_from: float = 0.6
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        sam2_testbed.testbed_model_overrides(self.size, self.image_size)  # validates the size
        for name in ("steps", "scenes_per_step", "prompts_per_scene", "checkpoint_every", "loss_size", "image_size"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.seed, "seed", minimum=0)
        for name in ("warmup_fraction", "final_lr_fraction", "click_map_full_until", "click_map_off_from"):
            check_float(getattr(self, name), name, minimum=0.0, maximum=1.0)
        if self.click_map_off_from < self.click_map_full_until:
            raise UsamError("click_map_off_from must not come before click_map_full_until")


def learning_rate(step: int, config: TrainingConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay to the final fraction."""
    warmup = max(1, round(config.warmup_fraction * config.steps))
    if step < warmup:
        return config.peak_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - 1 - warmup)
    floor = config.final_lr_fraction
    return config.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def click_map_probability(step: int, config: TrainingConfig) -> float:
    """Probability that step ``step`` also gives its prompts as click maps: 1, then linearly down to 0."""
    position = step / config.steps
    if position < config.click_map_full_until:
        return 1.0
    if position >= config.click_map_off_from:
        return 0.0
    return 1.0 - (position - config.click_map_full_until) / (config.click_map_off_from - config.click_map_full_until)


@dataclasses.dataclass
class StepBatch:
    """What one step trains on: images, and per prompt its image, prompt and target."""

    images: list[np.ndarray]
    image_index: list[int]
    prompts: list[TrainingPrompt]
    targets: list[np.ndarray]
    use_click_map: list[bool]


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of every random draw of one step (scenes, targets, prompts, click map)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(step)]))


def draw_step_batch(step: int, config: TrainingConfig, make_scene: SceneMaker) -> StepBatch:
    """Draw the fresh scenes and prompts of one step (a function of the seed and the step only)."""
    rng = step_rng(config.seed, step)
    map_probability = click_map_probability(step, config)
    batch = StepBatch([], [], [], [], [])
    while len(batch.images) < config.scenes_per_step:
        scene = make_scene(int(rng.integers(0, 2**31 - 1)))
        if not scene.targets:
            continue
        image_index = len(batch.images)
        batch.images.append(scene.image)
        for _ in range(config.prompts_per_scene):
            target = scene.targets[int(rng.integers(len(scene.targets)))].mask
            batch.image_index.append(image_index)
            batch.prompts.append(sample_training_prompt(target, rng))
            batch.targets.append(np.asarray(target, dtype=bool))
            batch.use_click_map.append(bool(rng.random() < map_probability))
    return batch


def _decode_batch(
    model: torch.nn.Module, batch: StepBatch, config: TrainingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """All four mask logits (N, 4, h, w) and IoU predictions (N, 4) of a step's prompts, in prompt order.

    Prompts are decoded in groups of equal point count and click-map use, so every prompt gets exactly the tokens
    SAM2's predictor would give it (no extra padding points).
    """
    images = sam2_testbed.training_image_batch(model, batch.images)
    features = sam2_testbed.encode_training_images(model, images)
    device = images.device
    scale = config.image_size / batch.images[0].shape[1]  # SAM2's predictor rescales coordinates to its input
    map_size = config.image_size // 4
    groups: dict[tuple[int, bool], list[int]] = {}
    for index, prompt in enumerate(batch.prompts):
        groups.setdefault((prompt.num_point_slots, batch.use_click_map[index]), []).append(index)
    mask_logits: list[torch.Tensor] = [torch.empty(0)] * len(batch.prompts)
    iou_predictions: list[torch.Tensor] = [torch.empty(0)] * len(batch.prompts)
    for (_, use_click_map), indices in groups.items():
        coords, labels = [], []
        for index in indices:
            prompt = batch.prompts[index]
            if prompt.kind is PromptKind.BOX:
                coords.append(prompt.box.reshape(2, 2))
                labels.append([2, 3])  # SAM2's box-corner labels, as its predictor puts a box before the points
            else:
                coords.append(prompt.points)
                labels.append([1] * len(prompt.points))
        maps = None
        if use_click_map:
            maps = np.stack([click_map(batch.prompts[i], map_size, batch.images[0].shape[1]) for i in indices])
            maps = torch.from_numpy(maps)[:, None].to(device)
        outputs = sam2_testbed.decoder_training_outputs(
            model,
            features,
            torch.from_numpy(np.stack(coords) * scale).float().to(device),
            torch.tensor(labels, dtype=torch.int, device=device),
            mask_inputs=maps,
            image_index=torch.tensor([batch.image_index[i] for i in indices], device=device),
        )
        for row, index in enumerate(indices):
            mask_logits[index] = outputs.mask_logits[row]
            iou_predictions[index] = outputs.iou_predictions[row]
    return torch.stack(mask_logits), torch.stack(iou_predictions)


def _targets_at(targets: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """(N, 1, size, size) float targets: the masks area-averaged to ``size`` and thresholded at one half."""
    masks = torch.from_numpy(np.stack(targets)).float()[:, None]
    return (functional.adaptive_avg_pool2d(masks, size) >= 0.5).float().to(device)


@dataclasses.dataclass
class StepStats:
    """Figures of one step, measured on its fresh scenes before the update.

    Attributes:
        loss: The training loss.
        best3: Mean IoU of single-click prompts, best of the three multimask outputs (None if there were none).
        pick: Mean IoU of single-click prompts, the output the IoU head ranks first (None if there were none).
        iou_mae: Mean absolute error of the IoU head over the supervised outputs.
        click_map_share: Share of the step's prompts that also got the click map.
    """

    loss: float
    best3: float | None
    pick: float | None
    iou_mae: float
    click_map_share: float


def step_loss(
    mask_logits: torch.Tensor, iou_predictions: torch.Tensor, batch: StepBatch, config: TrainingConfig
) -> tuple[torch.Tensor, StepStats]:
    """The recipe's loss of one step (see the module docstring), and the step's figures."""
    size = config.loss_size
    logits = functional.interpolate(
        mask_logits, size=(size, size), mode="bilinear", align_corners=False
    )  # (N, 4, s, s)
    truth = _targets_at(batch.targets, size, logits.device)  # (N, 1, s, s)
    probability = torch.sigmoid(logits)
    cross_entropy = functional.binary_cross_entropy_with_logits(logits, truth.expand_as(logits), reduction="none")
    p_true = probability * truth + (1 - probability) * (1 - truth)
    alpha = FOCAL_ALPHA * truth + (1 - FOCAL_ALPHA) * (1 - truth)
    focal = (alpha * cross_entropy * (1 - p_true) ** FOCAL_GAMMA).mean(dim=(-2, -1))  # (N, 4)
    dice = 1 - (2 * (probability * truth).sum(dim=(-2, -1)) + 1) / (
        probability.sum(dim=(-2, -1)) + truth.sum(dim=(-2, -1)) + 1
    )
    per_mask = config.focal_weight * focal + dice  # (N, 4)
    refined = torch.tensor([p.kind is not PromptKind.ONE_CLICK for p in batch.prompts], device=logits.device)
    mask_loss = per_mask[:, 1:].min(dim=1).values + refined.float() * per_mask[:, 0]
    with torch.no_grad():
        predicted = (logits > 0).float()
        intersection = (predicted * truth).sum(dim=(-2, -1))
        union = ((predicted + truth) > 0).float().sum(dim=(-2, -1))
        actual_iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    supervised = torch.ones_like(actual_iou, dtype=torch.bool)
    supervised[:, 0] = refined
    iou_error = (iou_predictions - actual_iou)[supervised]
    loss = mask_loss.mean() + config.iou_loss_weight * (iou_error**2).mean()
    single = ~refined
    best3 = pick = None
    if single.any():
        best3 = float(actual_iou[single, 1:].max(dim=1).values.mean())
        picked = iou_predictions[single, 1:].detach().argmax(dim=1, keepdim=True)
        pick = float(actual_iou[single, 1:].gather(1, picked).mean())
    map_share = float(np.mean(batch.use_click_map))
    stats = StepStats(float(loss.detach()), best3, pick, float(iou_error.detach().abs().mean()), map_share)
    return loss, stats


def make_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over every trainable parameter (the learning rate is set per step by :func:`learning_rate`)."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.AdamW(parameters, lr=config.peak_lr, weight_decay=config.weight_decay)


def training_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config: TrainingConfig, make_scene: SceneMaker
) -> StepStats:
    """One optimizer step of the recipe on fresh scenes; returns the step's figures."""
    batch = draw_step_batch(step, config, make_scene)
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    mask_logits, iou_predictions = _decode_batch(model, batch, config)
    loss, stats = step_loss(mask_logits, iou_predictions, batch, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return stats


def model_card_path(checkpoint: str | Path) -> Path:
    """Where the model card of a checkpoint lives: next to it, ``.json`` instead of its suffix."""
    return Path(checkpoint).with_suffix(MODEL_CARD_SUFFIX)


def resume_state_path(checkpoint: str | Path) -> Path:
    """Where the optimizer state for resuming a run lives: next to the checkpoint."""
    return Path(checkpoint).with_suffix(RESUME_SUFFIX)


def click_map_prompting(config: TrainingConfig) -> ClickMapPrompting | None:
    """The click map a model trained with ``config`` needs with every prompt, or None (points and boxes alone).

    None when the click map was annealed to zero; else the map's encoding, which usam's predictor then adds to every
    prompt as SAM2's mask input (:mod:`usam.model_card`, :func:`usam.click_map.click_map`).
    """
    if config.click_map_off_from < 1.0:
        return None
    return ClickMapPrompting(sigma_px=CLICK_MAP_SIGMA, amplitude=CLICK_MAP_AMPLITUDE, map_size=config.image_size // 4)


def prompting(config: TrainingConfig) -> dict[str, Any]:
    """The model card's ``prompting`` entry for a model trained with ``config`` (see :func:`click_map_prompting`)."""
    return prompting_entry(click_map_prompting(config))


def default_model_name(config: TrainingConfig) -> str:
    """The name of a test-bed model in its card, stores and heads: ``testbed-<size>``."""
    return f"testbed-{config.size}"


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a model's weights: each entry's name and its tensor's bytes, in order (hex).

    Unlike a checkpoint file's own hash it does not depend on the file's name (``torch.save`` puts that inside the
    archive), so two builds of the same model can be compared by it.
    """
    digest = hashlib.sha256()
    for name, value in state_dict.items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_card(
    config: TrainingConfig,
    checkpoint: Path,
    steps_done: int,
    log: list[dict[str, Any]],
    name: str | None = None,
    arithmetic: list[dict[str, Any]] | None = None,
    weights_sha256: str | None = None,
) -> ModelCard:
    """The model card of a test-bed checkpoint: how to build and prompt it like any card's SAM2.

    Its ``training`` records how it was trained: ``settings`` (the config), ``steps_done``, the ``log``, if given
    the ``arithmetic`` of the processes that trained it (from which step, see
    :func:`usam.testbed.numerics.arithmetic_record`), and the weights' :func:`weights_digest`.
    """
    training: dict[str, Any] = {"settings": dataclasses.asdict(config), "steps_done": steps_done, "log": log}
    if arithmetic:
        training["arithmetic"] = arithmetic
    if weights_sha256 is not None:
        training["weights_sha256"] = weights_sha256
    return ModelCard(
        name=name or default_model_name(config),
        config=sam2_testbed.testbed_config_name(),
        checkpoint=Path(checkpoint).resolve(),
        size=config.size,
        hydra_overrides=tuple(sam2_testbed.testbed_model_overrides(config.size, config.image_size)),
        prompting=click_map_prompting(config),
        training=training,
    )


def save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    checkpoint: Path,
    config: TrainingConfig,
    steps_done: int,
    log: list[dict[str, Any]],
    name: str | None = None,
    arithmetic: list[dict[str, Any]] | None = None,
) -> None:
    """Write the checkpoint, its resume state and its model card, each atomically (card last: it marks completion)."""
    with atomic_path(checkpoint) as temporary:
        torch.save({"model": model.state_dict()}, temporary)
    with atomic_path(resume_state_path(checkpoint)) as temporary:
        torch.save({"optimizer": optimizer.state_dict(), "steps_done": steps_done}, temporary)
    card = model_card(config, checkpoint, steps_done, log, name, arithmetic, weights_digest(model.state_dict()))
    save_model_card(card, model_card_path(checkpoint))


def _load_resume(checkpoint: Path, config: TrainingConfig) -> tuple[dict, dict, int, list[dict], list[dict]] | None:
    """The saved model state, optimizer state, steps done, log and arithmetic of an earlier run of the same config."""
    card_file, resume_file = model_card_path(checkpoint), resume_state_path(checkpoint)
    if not (checkpoint.exists() and card_file.exists() and resume_file.exists()):
        return None
    training = load_model_card(card_file).training or {}
    if training.get("settings") != dataclasses.asdict(config):
        raise UsamError(
            f"{checkpoint} was trained with other settings than asked for now; choose another output path or "
            "delete it (and its .json and .resume.pt) to start over"
        )
    try:
        model_state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
        resume = torch.load(resume_file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated files
        raise CheckpointError(f"cannot resume from {checkpoint}: {error}; delete it to start over") from None
    if int(resume["steps_done"]) != int(training.get("steps_done", -1)):
        raise CheckpointError(f"{checkpoint} and its resume state disagree; delete them to start over")
    steps_done = int(training["steps_done"])
    return model_state, resume["optimizer"], steps_done, list(training.get("log", [])), training.get("arithmetic", [])


def _default_scene_maker() -> SceneMaker:
    try:
        from usam.testbed.scenes import make_scene
    except ImportError:
        raise UsamError("the scene generator (usam.testbed.scenes) is not available; pass make_scene") from None
    return make_scene


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def train_testbed_model(
    checkpoint: str | Path,
    config: TrainingConfig,
    *,
    make_scene: SceneMaker | None = None,
    stop_after: int | None = None,
    log_every: int = 50,
    progress: bool = True,
    name: str | None = None,
    on_step: Callable[[int], None] | None = None,
    arithmetic: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Train a test-bed model from scratch (or resume an interrupted run of the same settings) and save it.

    Args:
        checkpoint: Where the SAM2 checkpoint goes; its model card and resume state are written next to it.
        config: The run's settings.
        make_scene: Scene generator ``seed -> scene``; default :func:`usam.testbed.scenes.make_scene`.
        stop_after: Stop (with a checkpoint) after this many steps in total, e.g. to keep an under-trained model
            or to split a run; the schedule still spans ``config.steps``.
        log_every: Steps per entry of the training log (averages over the entry's steps).
        progress: Show a progress bar.
        name: The model's name in its card (ending with ``-<size>``); default :func:`default_model_name`.
        on_step: Called with the number of steps done after each step (progress of a worker process).
        arithmetic: What this process computes with (:func:`usam.testbed.numerics.arithmetic_record`), recorded in
            the card from the first step it trains on; a resumed run that computes otherwise adds an entry.

    Returns:
        The trained model, in eval mode.
    """
    from tqdm.auto import tqdm

    checkpoint = Path(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    make_scene = make_scene or _default_scene_maker()
    end = config.steps if stop_after is None else min(config.steps, check_int(stop_after, "stop_after", minimum=0))
    model = sam2_testbed.build_testbed_model(config.size, image_size=config.image_size, seed=config.seed)
    optimizer = make_optimizer(model, config)
    start, log, arithmetic_log = 0, [], []
    resumed = _load_resume(checkpoint, config)
    if resumed is not None:
        model_state, optimizer_state, start, log, arithmetic_log = resumed
        model.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(optimizer_state)
    if arithmetic is not None and start < end:
        last = dict(arithmetic_log[-1]) if arithmetic_log else {}
        last.pop("from_step", None)
        if last != arithmetic:
            arithmetic_log = [*arithmetic_log, {"from_step": start, **arithmetic}]
    window: list[StepStats] = []
    window_start = time.perf_counter()
    with tqdm(
        total=end, initial=min(start, end), desc=f"training {config.size}", unit="step", disable=not progress
    ) as bar:
        for step in range(start, end):
            window.append(training_step(model, optimizer, step, config, make_scene))
            bar.update(1)
            steps_done = step + 1
            if on_step is not None:
                on_step(steps_done)
            if steps_done % log_every == 0 or steps_done == end:
                log.append(
                    {
                        "step": steps_done,
                        "seconds_per_step": (time.perf_counter() - window_start) / len(window),
                        "loss": _mean([s.loss for s in window]),
                        "best3": _mean([s.best3 for s in window]),
                        "pick": _mean([s.pick for s in window]),
                        "iou_mae": _mean([s.iou_mae for s in window]),
                        "click_map_share": _mean([s.click_map_share for s in window]),
                        "lr": learning_rate(step, config),
                    }
                )
                bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", best3=log[-1]["best3"])
                window, window_start = [], time.perf_counter()
            if steps_done % config.checkpoint_every == 0 or steps_done == end:
                save_checkpoint(model, optimizer, checkpoint, config, steps_done, log, name, arithmetic_log)
    if start >= end and not checkpoint.exists():
        save_checkpoint(model, optimizer, checkpoint, config, end, log, name, arithmetic_log)
    return model.eval()
