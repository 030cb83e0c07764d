"""Model cards: saving and loading, the clear errors of a bad card, and building the SAM2 a card names."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch

from conftest import build_small_sam2
from usam import UncertainSAM, sam2_adapter
from usam.errors import CheckpointError, InvalidInputError
from usam.model_card import (
    ClickMapPrompting,
    ModelCard,
    is_model_card_path,
    load_model_card,
    resolve_model,
    save_model_card,
)
from usam.models import get_model_spec, size_and_family

TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL_OVERRIDES = tuple(sam2_adapter.small_model_overrides(128))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random-weight tiny SAM2 saved as an ordinary checkpoint, and its weights."""
    folder = tmp_path_factory.mktemp("card")
    model = build_small_sam2(seed=7)
    torch.save({"model": model.state_dict()}, folder / "mine-tiny.pt")
    return folder / "mine-tiny.pt", model.state_dict()


def tiny_card(checkpoint_path: Path, **changes) -> ModelCard:
    fields = {
        "name": "mine-tiny",
        "config": TINY_CONFIG,
        "checkpoint": checkpoint_path,
        "size": "tiny",
        "hydra_overrides": SMALL_OVERRIDES,
        "version": "sam2.1",
    }
    return ModelCard(**{**fields, **changes})


def write_card(folder: Path, content: dict, name: str = "card.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_a_card_round_trips_with_its_checkpoint_relative_to_its_folder(checkpoint, suffix):
    path, _ = checkpoint
    card = tiny_card(path, prompting=ClickMapPrompting(4.0, 5.0, 32), training={"steps_done": 3, "log": [{"a": 1}]})
    card_path = save_model_card(card, path.parent / f"round{suffix}")
    assert load_model_card(card_path) == card
    text = card_path.read_text()
    assert "mine-tiny.pt" in text
    assert str(path.parent) not in text  # relative: the folder can move
    moved = path.parent.parent / f"moved-{suffix[1:]}"
    shutil.copytree(path.parent, moved)
    assert load_model_card(moved / card_path.name).checkpoint == (moved / "mine-tiny.pt").resolve()


def test_a_card_without_prompting_says_sparse_and_loads_as_none(checkpoint, tmp_path):
    card_path = save_model_card(tiny_card(checkpoint[0]), tmp_path / "sparse.json")
    assert json.loads(card_path.read_text())["prompting"] == {"kind": "sparse"}
    assert load_model_card(card_path).prompting is None


def _content(checkpoint_path: Path) -> dict:
    return {"name": "mine-tiny", "config": TINY_CONFIG, "checkpoint": str(checkpoint_path), "size": "tiny"}


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda c: c.pop("checkpoint"), InvalidInputError, "missing key.*checkpoint"),
        (lambda c: c.update(colour="red"), InvalidInputError, "unknown key.*colour"),
        (lambda c: c.update(size="huge"), InvalidInputError, "'size' must be one of tiny, small, base-plus, large"),
        (lambda c: c.update(name="mine"), InvalidInputError, "must end with its size, -tiny"),
        (lambda c: c.update(name="sam2.1-tiny"), InvalidInputError, "name of a released SAM2 model"),
        (lambda c: c.update(version="sam3"), InvalidInputError, "'version' must be one of sam2, sam2.1"),
        (lambda c: c.update(hydra_overrides="++a=1"), InvalidInputError, "'hydra_overrides' must be a list"),
        (lambda c: c.update(prompting={"kind": "scribble"}), InvalidInputError, "prompting kind must be one of"),
        (lambda c: c.update(prompting={"kind": "click_map"}), InvalidInputError, "exactly the keys"),
        (lambda c: c.update(checkpoint="gone.pt"), CheckpointError, "gone.pt does not exist"),
    ],
)
def test_bad_cards_get_clear_errors_naming_the_card(checkpoint, tmp_path, change, error, message):
    content = _content(checkpoint[0])
    change(content)
    card_path = write_card(tmp_path, content)
    with pytest.raises(error, match=message) as raised:
        load_model_card(card_path)
    assert str(card_path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_missing_or_unparsable_card_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_model_card(tmp_path / "nothing.json")
    (tmp_path / "broken.json").write_text('{"name": ')
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_model_card(tmp_path / "broken.json")
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_model_card(tmp_path / "broken.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="is a mapping"):
        load_model_card(tmp_path / "list.json")


def test_a_model_argument_is_a_card_when_it_ends_with_a_card_suffix(checkpoint, tmp_path):
    card_path = save_model_card(tiny_card(checkpoint[0]), tmp_path / "Mine.JSON")
    assert is_model_card_path(card_path)
    assert is_model_card_path("x.yml")
    assert not is_model_card_path("sam2.1-tiny")
    assert resolve_model(str(card_path)).name == "mine-tiny"
    assert resolve_model("sam2.1-large") is get_model_spec("sam2.1-large")


def test_size_and_family_pair_cards_by_the_name_before_the_size():
    assert size_and_family("mine-tiny") == ("tiny", "mine")
    assert size_and_family("my-sam-base-plus") == ("base-plus", "my-sam")
    assert size_and_family("sam2_hiera_l") == ("large", "sam2")


def test_a_card_builds_its_model_with_the_checkpoints_weights(checkpoint, tmp_path):
    path, weights = checkpoint
    card_path = save_model_card(tiny_card(path), tmp_path / "mine.json")
    model = sam2_adapter.build_sam2_model(str(card_path), device="cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert sam2_adapter.model_name_of(model) == "mine-tiny"
    assert sam2_adapter.sam2_version_of(model) == "sam2.1"
    record = sam2_adapter.weights_record_of(model)
    assert record["checkpoint"] == str(path.resolve())
    assert record["model_card"]["name"] == "mine-tiny"
    assert record["model_card"]["checkpoint"] == str(path.resolve())  # outside the card's folder: absolute
    wrapped = UncertainSAM.from_pretrained(load_model_card(card_path), device="cpu")
    assert sam2_adapter.model_name_of(wrapped.predictor) == "mine-tiny"


def test_a_card_with_a_config_file_builds_like_the_package_config(checkpoint, tmp_path):
    path, weights = checkpoint
    config_file = tmp_path / "my_config.yaml"
    config_file.write_text((resources.files("sam2") / TINY_CONFIG).read_text())
    card_path = save_model_card(tiny_card(path, config="my_config.yaml"), tmp_path / "file-config.json")
    model = sam2_adapter.build_sam2_model(card_path, device="cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    # SAM2's own build adds the dynamic multimask fallback; a config file gets it too.
    assert model.sam_mask_decoder.dynamic_multimask_via_stability


def test_a_config_that_does_not_build_is_a_clear_error(checkpoint, tmp_path):
    path, _ = checkpoint
    card_path = save_model_card(tiny_card(path, config="configs/sam2.1/no_such_config.yaml"), tmp_path / "a.json")
    with pytest.raises(InvalidInputError, match=r"model card .*a\.json: SAM2 config .*no_such_config.* does not build"):
        sam2_adapter.build_sam2_model(card_path, device="cpu")
    card_path = save_model_card(tiny_card(path, config="missing.yaml"), tmp_path / "b.json")
    with pytest.raises(InvalidInputError, match=r"missing\.yaml does not exist"):
        sam2_adapter.build_sam2_model(card_path, device="cpu")


def test_a_checkpoint_that_does_not_fit_the_config_is_a_clear_error(checkpoint, tmp_path):
    path, _ = checkpoint
    # The full tiny trunk (embed_dim 96) at 128 px: the small trunk's checkpoint does not fit it.
    full_trunk = tiny_card(path, hydra_overrides=("++model.image_size=128",))
    card_path = save_model_card(full_trunk, tmp_path / "full.json")
    with pytest.raises(CheckpointError, match=r"does not fit the config of model card .*full\.json"):
        sam2_adapter.build_sam2_model(card_path, device="cpu")


def test_a_card_refuses_a_second_checkpoint_and_a_click_map_of_the_wrong_size(checkpoint, tmp_path):
    path, _ = checkpoint
    card_path = save_model_card(tiny_card(path), tmp_path / "mine.json")
    with pytest.raises(InvalidInputError, match="names its checkpoint"):
        sam2_adapter.build_sam2_model(card_path, checkpoint=path, device="cpu")
    wrong = save_model_card(tiny_card(path, prompting=ClickMapPrompting(4.0, 5.0, 64)), tmp_path / "wrong.json")
    with pytest.raises(InvalidInputError, match="click map is 64 px but the model's mask input is 32 px"):
        sam2_adapter.build_sam2_model(wrong, device="cpu")


def test_the_heads_version_check_reads_the_cards_version(checkpoint, tmp_path):
    import warnings

    from usam.errors import UsamWarning
    from usam.heads import random_heads

    heads = random_heads(sam2_version="sam2.1")
    older = save_model_card(tiny_card(checkpoint[0], version="sam2"), tmp_path / "older.json")
    with pytest.warns(UsamWarning, match="trained for sam2.1 but the model is mine-tiny"):
        UncertainSAM.from_pretrained(older, heads, device="cpu")
    for version in ("sam2.1", None):
        card_path = save_model_card(tiny_card(checkpoint[0], version=version), tmp_path / f"{version}.json")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UsamWarning)
            UncertainSAM.from_pretrained(card_path, heads, device="cpu")
