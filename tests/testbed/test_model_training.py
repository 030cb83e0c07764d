"""Training test-bed models: the schedule, one step, checkpoints that load like any SAM2, resuming, the checks."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from usam import UncertainSAM, sam2_adapter
from usam.errors import UsamError
from usam.sam2_adapter import testbed as sam2_testbed
from usam.testbed.model_quality import prompt_dependence, single_click_miou
from usam.testbed.model_training import (
    TrainingConfig,
    click_map_probability,
    learning_rate,
    make_optimizer,
    model_card_path,
    prompting,
    train_testbed_model,
    training_step,
    weights_digest,
)


@dataclasses.dataclass
class StandInTarget:
    mask: np.ndarray


@dataclasses.dataclass
class StandInScene:
    image: np.ndarray
    targets: list[StandInTarget]


def stand_in_scene(seed: int, size: int = 128) -> StandInScene:
    """Two or three flat-coloured ellipses and rectangles on a flat background (a stand-in for the real scenes)."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3))
    image[:] = rng.random(3)
    rows, cols = np.mgrid[:size, :size]
    targets: list[StandInTarget] = []
    for _ in range(int(rng.integers(2, 4))):
        x, y = rng.uniform(24, size - 24, 2)
        radius = rng.uniform(10, 20)
        if rng.random() < 0.5:
            mask = ((cols - x) / radius) ** 2 + ((rows - y) / (0.7 * radius)) ** 2 < 1
        else:
            mask = (abs(cols - x) < radius) & (abs(rows - y) < 0.6 * radius)
        image[mask] = rng.random(3)
        for target in targets:
            target.mask &= ~mask  # later objects occlude earlier ones
        targets.append(StandInTarget(mask.copy()))
    targets = [target for target in targets if target.mask.sum() >= 40]
    return StandInScene((image * 255).astype(np.uint8), targets)


# Small batches keep a step well under a second; the recipe itself is unchanged.
FAST = {"size": "tiny", "scenes_per_step": 2, "prompts_per_scene": 4, "steps": 20, "seed": 3}


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine_to_the_floor():
    config = TrainingConfig(steps=1000, peak_lr=1e-3, warmup_fraction=0.04, final_lr_fraction=0.05)
    rates = np.array([learning_rate(step, config) for step in range(1000)])
    assert rates[0] == pytest.approx(1e-3 / 40)
    assert np.allclose(np.diff(rates[:40]), 1e-3 / 40)  # linear rise over the first 4 %
    assert rates.argmax() == 39
    assert rates.max() == pytest.approx(1e-3)
    assert (np.diff(rates[39:]) <= 1e-15).all()  # then never rises again
    assert rates[-1] == pytest.approx(5e-5)
    middle = 39 + (999 - 39) // 2
    assert rates[middle] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5), rel=1e-2)  # half-way down the cosine


def test_click_map_is_always_given_at_first_and_never_at_the_end():
    config = TrainingConfig(steps=100, click_map_full_until=0.2, click_map_off_from=0.6)
    probabilities = [click_map_probability(step, config) for step in range(100)]
    assert probabilities[:20] == [1.0] * 20
    assert probabilities[60:] == [0.0] * 40
    assert probabilities[40] == pytest.approx(0.5)
    assert prompting(config) == {"kind": "sparse"}  # annealed away: prompted like any SAM2


def test_a_model_that_keeps_the_click_map_says_so_in_its_card():
    config = TrainingConfig(steps=100, click_map_full_until=1.0, click_map_off_from=1.0)
    assert [click_map_probability(step, config) for step in (0, 99)] == [1.0, 1.0]
    assert prompting(config) == {"kind": "click_map", "sigma_px": 4.0, "amplitude": 5.0, "map_size": 32}


def test_a_step_has_a_finite_loss_and_changes_the_parameters():
    config = TrainingConfig(**FAST)
    model = sam2_testbed.build_testbed_model("tiny", seed=config.seed)
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    stats = training_step(model, make_optimizer(model, config), 0, config, stand_in_scene)
    assert math.isfinite(stats.loss)
    assert stats.loss > 0
    assert stats.click_map_share == 1.0  # the first steps always give the click map
    changed = [name for name, value in model.named_parameters() if not torch.equal(value, before[name])]
    for part in ("image_encoder.trunk", "sam_prompt_encoder", "sam_mask_decoder.transformer", "iou_prediction_head"):
        assert any(part in name for name in changed), part


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run, and the same run split as 1 step + a resumed step."""
    folder = tmp_path_factory.mktemp("testbed")
    config = TrainingConfig(**FAST)
    options = {"make_scene": stand_in_scene, "log_every": 1, "progress": False}
    straight = train_testbed_model(folder / "straight.pt", config, stop_after=2, **options)
    train_testbed_model(folder / "split.pt", config, stop_after=1, **options)
    first_card = json.loads(model_card_path(folder / "split.pt").read_text())
    resumed = train_testbed_model(folder / "split.pt", config, stop_after=2, **options)
    return folder, config, straight, resumed, first_card


def test_resume_continues_from_the_saved_step_exactly(trained):
    folder, _, straight, resumed, first_card = trained
    assert first_card["training"]["steps_done"] == 1
    assert json.loads(model_card_path(folder / "split.pt").read_text())["training"]["steps_done"] == 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_card_records_the_arithmetic_of_each_stretch_of_training(tmp_path):
    config = dataclasses.replace(TrainingConfig(**FAST), steps=3)
    checkpoint = tmp_path / "m.pt"
    steps_seen: list[int] = []
    options = {"make_scene": stand_in_scene, "progress": False, "on_step": steps_seen.append}
    train_testbed_model(checkpoint, config, stop_after=1, arithmetic={"threads": 1}, **options)
    train_testbed_model(checkpoint, config, stop_after=2, arithmetic={"threads": 1}, **options)  # same: no entry
    train_testbed_model(checkpoint, config, stop_after=3, arithmetic={"threads": 4}, **options)
    record = json.loads(model_card_path(checkpoint).read_text())["training"]["arithmetic"]
    assert record == [{"from_step": 0, "threads": 1}, {"from_step": 2, "threads": 4}]
    assert steps_seen == [1, 2, 3]
    # The card names the weights by a digest that does not depend on the file: the checkpoint's weights give it.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    digest = json.loads(model_card_path(checkpoint).read_text())["training"]["weights_sha256"]
    assert digest == weights_digest(saved)
    saved[next(iter(saved))].view(-1)[0] += 1
    assert weights_digest(saved) != digest


def test_resuming_with_other_settings_is_refused(trained):
    folder, config, *_ = trained
    other = dataclasses.replace(config, peak_lr=1e-4)
    with pytest.raises(UsamError, match="other settings"):
        train_testbed_model(folder / "split.pt", other, make_scene=stand_in_scene, stop_after=3, progress=False)


def test_checkpoint_loads_through_usams_normal_loading_and_runs_uncertain_sam(trained):
    folder, config, straight, *_ = trained
    card = json.loads(model_card_path(folder / "straight.pt").read_text())
    assert card["size"] == "tiny"
    assert card["prompting"] == {"kind": "sparse"}
    assert card["training"]["steps_done"] == 2
    assert card["training"]["settings"]["seed"] == config.seed
    assert card["config"].endswith("sam2.1_hiera_t.yaml")
    assert [entry["step"] for entry in card["training"]["log"]] == [1, 2]
    loaded = sam2_adapter.build_sam2_model(
        "sam2.1-tiny", checkpoint=folder / card["checkpoint"], device="cpu", hydra_overrides=card["hydra_overrides"]
    )
    for (name, a), (_, b) in zip(straight.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    scene = stand_in_scene(99)
    model = UncertainSAM(sam2_adapter.make_image_predictor(loaded))
    model.set_image(scene.image)
    prediction = model.predict(point_coords=np.array([[64.0, 64.0]]), point_labels=np.array([1]))
    assert prediction.masks.shape == (3, 128, 128)
    assert prediction.iou_token.shape == (256,)


def test_model_checks_run_through_the_predictor_on_a_short_run(trained):
    _, _, straight, *_ = trained
    scenes = [stand_in_scene(1000 + index) for index in range(2)]
    dependence = prompt_dependence(straight, scenes)
    assert 0 < dependence < 1  # different clicks give different masks
    one_target = dataclasses.replace(scenes[0], targets=scenes[0].targets[:1])
    assert math.isnan(prompt_dependence(straight, [one_target]))
    quality = single_click_miou(straight, scenes)
    assert quality.count == sum(len(scene.targets) for scene in scenes)
    assert 0 <= quality.pick <= quality.best3 <= 1
