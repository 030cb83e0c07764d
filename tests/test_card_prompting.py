"""Click-map prompting: a card's model gets each prompt's click map as SAM2's mask input, everywhere usam prompts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_small_sam2
from usam import UncertainSAM, sam2_adapter
from usam.click_map import click_map
from usam.errors import InvalidInputError
from usam.model_card import ClickMapPrompting, ModelCard, save_model_card

PROMPTING = ClickMapPrompting(sigma_px=3.0, amplitude=6.0, map_size=32)


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompting")
    torch.save({"model": build_small_sam2(seed=4).state_dict()}, folder / "mine-tiny.pt")
    fields = {
        "config": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "checkpoint": folder / "mine-tiny.pt",
        "size": "tiny",
        "hydra_overrides": tuple(sam2_adapter.small_model_overrides(128)),
    }
    clicky = save_model_card(ModelCard(name="clicky-tiny", prompting=PROMPTING, **fields), folder / "clicky.json")
    plain = save_model_card(ModelCard(name="plain-tiny", **fields), folder / "plain.json")
    return clicky, plain


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return (rng.random((96, 160, 3)) * 255).astype(np.uint8)  # not square: the map follows SAM2's resize


class MaskInputs:
    """Captures the mask input (``masks``) that SAM2's prompt encoder receives, with a hook (SAM2 is not patched)."""

    def __init__(self, model: UncertainSAM) -> None:
        self.encoder = model.predictor.model.sam_prompt_encoder
        self.seen: list[torch.Tensor | None] = []

    def __enter__(self):
        self.handle = self.encoder.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def _hook(self, module, args, kwargs):
        masks = kwargs.get("masks", args[2] if len(args) > 2 else None)
        self.seen.append(None if masks is None else masks.detach().cpu().numpy())

    def __exit__(self, *exc_info):
        self.handle.remove()


def expected_map(points, box, image):
    return click_map(
        None if points is None else np.asarray(points, np.float32),
        None if box is None else np.asarray(box, np.float32),
        map_size=PROMPTING.map_size,
        image_hw=image.shape[:2],
        model_image_size=128,
        sigma_px=PROMPTING.sigma_px,
        amplitude=PROMPTING.amplitude,
    )


def test_predict_feeds_exactly_the_click_map_of_the_positive_clicks(cards, image):
    model = UncertainSAM.from_pretrained(cards[0], device="cpu")
    model.set_image(image)
    with MaskInputs(model) as captured:
        model.predict(point_coords=[[30, 40], [100, 20]], point_labels=[1, 0])
    (fed,) = captured.seen
    assert fed.shape == (1, 1, 32, 32)
    np.testing.assert_array_equal(fed[0, 0], expected_map([[30, 40]], None, image))  # the negative click is not drawn
    assert 0.8 * PROMPTING.amplitude < fed.max() <= PROMPTING.amplitude
    row, col = np.unravel_index(fed[0, 0].argmax(), (32, 32))
    assert (row, col) == (int(40.5 / 96 * 32), int(30.5 / 160 * 32))  # the peak sits at the click


def test_batched_prompts_boxes_and_predict_masks_each_get_their_own_map(cards, image):
    model = UncertainSAM.from_pretrained(cards[0], device="cpu")
    model.set_image(image)
    points = np.array([[[20.0, 30.0]], [[120.0, 70.0]]])
    boxes = np.array([[10.0, 10.0, 60.0, 50.0], [80.0, 40.0, 150.0, 90.0]])
    with MaskInputs(model) as captured:
        model.predict(point_coords=points, point_labels=np.ones((2, 1)))
        model.predict_masks(box=boxes)
        model.predict(box=boxes[0], point_coords=[[30.0, 20.0]], point_labels=[1])
    batched, boxed, both = captured.seen
    for index in range(2):
        np.testing.assert_array_equal(batched[index, 0], expected_map(points[index], None, image))
        np.testing.assert_array_equal(boxed[index, 0], expected_map(None, boxes[index], image))
    np.testing.assert_array_equal(both[0, 0], expected_map([[30.0, 20.0]], boxes[0], image))
    assert not np.array_equal(batched[0], batched[1])


def test_normalised_coordinates_give_the_same_map(cards, image):
    model = UncertainSAM.from_pretrained(cards[0], device="cpu")
    model.set_image(image)
    with MaskInputs(model) as captured:
        model.predict(point_coords=[[40.0, 48.0]], point_labels=[1])
        model.predict(point_coords=[[40.0 / 160, 48.0 / 96]], point_labels=[1], normalize_coords=False)
    np.testing.assert_allclose(captured.seen[0], captured.seen[1], atol=1e-5)


def test_the_click_map_changes_the_masks_and_a_users_mask_input_is_refused(cards, image):
    clicky = UncertainSAM.from_pretrained(cards[0], device="cpu")
    plain = UncertainSAM.from_pretrained(cards[1], device="cpu")
    for model in (clicky, plain):
        model.set_image(image)
    prompt = {"point_coords": [[30.0, 40.0]], "point_labels": [1]}
    assert not np.array_equal(clicky.predict(**prompt).low_res_logits, plain.predict(**prompt).low_res_logits)
    with pytest.raises(InvalidInputError, match=r"click map .* cannot take a mask_input"):
        clicky.predict(**prompt, mask_input=np.zeros((1, 32, 32), np.float32))


def test_a_card_without_prompting_gets_no_mask_input(cards, image):
    model = UncertainSAM.from_pretrained(cards[1], device="cpu")
    model.set_image(image)
    with MaskInputs(model) as captured:
        model.predict(point_coords=[[30, 40]], point_labels=[1])
        model.predict_masks(box=[10.0, 10.0, 60.0, 50.0])
    assert captured.seen == [None, None]


def test_the_click_map_of_a_square_image_is_the_training_map():
    """On a square image of the model's size (the training case) the map is the test-bed's training map."""
    from usam.testbed.prompts import PromptKind, TrainingPrompt
    from usam.testbed.prompts import click_map as training_click_map

    prompt = TrainingPrompt(PromptKind.CLICKS, np.array([[10.0, 100.0], [64.0, 3.0]], np.float32))
    general = click_map(prompt.points, None, map_size=32, image_hw=(128, 128), model_image_size=128)
    np.testing.assert_array_equal(general, training_click_map(prompt, 32, 128))
    stretched = click_map(
        prompt.points * [2, 1] + [0.5, 0], None, map_size=32, image_hw=(128, 256), model_image_size=128
    )
    np.testing.assert_allclose(stretched, general, atol=1e-5)  # twice as wide (same pixel centres): the same map


def test_a_test_bed_model_trained_with_the_click_map_gets_it_through_its_card(tmp_path, image):
    """The trainer's card says click_map when the map was never annealed away; usam then feeds it from the card."""
    from usam.testbed.model_training import TrainingConfig, model_card_path, train_testbed_model

    config = TrainingConfig(
        size="tiny", steps=4, seed=1, scenes_per_step=1, prompts_per_scene=2, click_map_full_until=1.0,
        click_map_off_from=1.0,
    )  # fmt: skip
    checkpoint = tmp_path / "clicky.pt"
    train_testbed_model(checkpoint, config, stop_after=1, progress=False)
    model = UncertainSAM.from_pretrained(model_card_path(checkpoint), device="cpu")
    model.set_image(image)
    with MaskInputs(model) as captured:
        model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    expected = click_map(np.array([[30.0, 40.0]], np.float32), None, map_size=32, image_hw=image.shape[:2],
                         model_image_size=128)  # fmt: skip
    np.testing.assert_array_equal(captured.seen[0][0, 0], expected)
