"""Model cards on the command line: `usam predict --model CARD`, `usam benchmark --model CARD`, bad cards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_small_sam2, run_cli
from usam import sam2_adapter
from usam.model_card import ModelCard, save_model_card


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-card")
    torch.save({"model": build_small_sam2(seed=3).state_dict()}, folder / "mine-tiny.pt")
    card = ModelCard(
        name="mine-tiny",
        config="configs/sam2.1/sam2.1_hiera_t.yaml",
        checkpoint=folder / "mine-tiny.pt",
        size="tiny",
        hydra_overrides=tuple(sam2_adapter.small_model_overrides(128)),
        version="sam2.1",
    )
    save_model_card(card, folder / "mine-tiny.yaml")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(folder / "photo.png")
    return folder


def test_predict_with_a_model_card(files, tmp_path, capsys):
    status, _out, err = run_cli(
        ["predict", files / "photo.png", "--model", files / "mine-tiny.yaml", "--point", "40,30", "--out", tmp_path],
        capsys,
    )
    assert status == 0, err
    record = json.loads((tmp_path / "photo.usam.json").read_text())
    assert record["model"] == str(files / "mine-tiny.yaml")
    assert len(record["objects"][0]["masks"]) == 3
    assert (tmp_path / "photo.usam.png").stat().st_size > 0


def test_benchmark_with_a_model_card(files, capsys):
    argv = ["benchmark", "--model", files / "mine-tiny.yaml", "--iterations", "1", "--warmup", "0"]
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err
    assert json.loads(out.strip().splitlines()[-1])["model"] == "mine-tiny"


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("{", [], "is not valid JSON"),
        ('{"name": "mine-tiny", "config": "configs/sam2.1/sam2.1_hiera_t.yaml", "size": "tiny"}', [], "missing key"),
        (
            '{"name": "mine-tiny", "config": "configs/sam2.1/sam2.1_hiera_t.yaml", "size": "tiny", '
            '"checkpoint": "nowhere.pt"}',
            [],
            "nowhere.pt does not exist",
        ),
        (
            '{"name": "mine-tiny", "config": "configs/sam2.1/sam2.1_hiera_t.yaml", "size": "tiny", '
            '"checkpoint": "mine-tiny.pt"}',
            [],
            "does not fit the config of model card",  # the card lacks the small trunk's overrides
        ),
        (
            '{"name": "mine-tiny", "config": "configs/sam2.1/sam2.1_hiera_t.yaml", "size": "tiny", '
            '"checkpoint": "mine-tiny.pt"}',
            ["--checkpoint", "mine-tiny.pt"],
            "names its checkpoint; drop --checkpoint",
        ),
    ],
)
def test_bad_cards_are_one_line_errors(files, tmp_path, capsys, content, extra, message):
    card = files / f"bad-{abs(hash((content, tuple(extra))))}.json"
    card.write_text(content)
    extra = [files / value if value.endswith(".pt") else value for value in extra]
    argv = ["predict", files / "photo.png", "--model", card, "--point", "40,30", "--out", tmp_path, *extra]
    status, _out, err = run_cli(argv, capsys)
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("usam: error: ")]
    assert len(errors) == 1
    assert message in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "photo.usam.json").exists()
