"""Extraction with model cards: `usam extract --models` with card files, the card in the store, the model gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SMALL_OVERRIDE_ARGS, TWO_SIZES, write_folder_dataset
from usam import sam2_adapter
from usam.cli import main
from usam.extraction.extract import _gap_model_pair
from usam.extraction.identity import file_sha256
from usam.model_card import ClickMapPrompting, ModelCard, save_model_card
from usam.models import get_model_spec
from usam.store import StoreReader, read_table


@pytest.fixture(scope="module")
def cards(tmp_path_factory, two_size_sam2):
    """A tiny and a large card (small random-weight models saved as checkpoints next to them)."""
    folder = tmp_path_factory.mktemp("cards")
    paths = {}
    for name, model in two_size_sam2.items():
        size = name.split("-", 1)[1]
        torch.save({"model": model.state_dict()}, folder / f"mysam-{size}.pt")
        card = ModelCard(
            name=f"mysam-{size}",
            config=get_model_spec(name).config,
            checkpoint=folder / f"mysam-{size}.pt",
            size=size,
            hydra_overrides=tuple(sam2_adapter.small_model_overrides(128)),
            version="sam2.1",
        )
        paths[size] = save_model_card(card, folder / f"mysam-{size}.json")
    return paths


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("data") / "folder", num_images=2)


def _extract(dataset, store, *models, extra=()):
    argv = ["extract", "--dataset", "folder", "--root", dataset, "--split", "all", "--out", store, "--models"]
    return main([str(arg) for arg in [*argv, *models, "--no-monte-carlo", "--no-progress", *extra]])


def test_extract_with_a_tiny_and_a_large_card_records_the_cards_and_the_model_gap(cards, dataset, tmp_path):
    assert _extract(dataset, tmp_path / "store", cards["tiny"], cards["large"]) == 0
    reader = StoreReader(tmp_path / "store")
    assert sorted(reader.models()) == ["mysam-large", "mysam-tiny"]
    weights = reader.options["identity"]["weights"]
    for size, card_path in cards.items():
        record = weights[f"mysam-{size}"]
        assert record["model_card"]["name"] == f"mysam-{size}"
        assert record["model_card"]["size"] == size
        assert record["model_card"]["checkpoint"] == f"mysam-{size}.pt"  # as written in the card, next to it
        assert record["checkpoint_sha256"] == file_sha256(card_path.with_suffix(".pt"))
    rows = read_table(tmp_path / "store").to_pylist()
    by_key = {(row["image_key"], row["object_id"], row["model"]): row for row in rows}
    gaps = 0
    for (image, obj, model), row in by_key.items():
        if model == "mysam-tiny":
            large = by_key[(image, obj, "mysam-large")]
            assert row["model_gap"] == pytest.approx(large["iou"] - row["iou"], abs=1e-6)
            gaps += 1
    assert gaps == 4


def test_cards_mix_with_released_names_and_pair_only_within_a_family(cards, dataset, tmp_path, two_size_sam2):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({"model": two_size_sam2["sam2.1-tiny"].state_dict()}, checkpoints / "sam2.1_hiera_tiny.pt")
    store = tmp_path / "store"
    extra = ["--checkpoint-dir", checkpoints, *SMALL_OVERRIDE_ARGS]
    # The released tiny's overrides also reach the card (after its own, which are the same here).
    assert _extract(dataset, store, TWO_SIZES[0], cards["large"], extra=extra) == 0
    table = read_table(store, columns=["model", "model_gap"])
    assert sorted(set(table.column("model").to_pylist())) == ["mysam-large", "sam2.1-tiny"]
    assert all(gap is None for gap in table.column("model_gap").to_pylist())  # sam2.1 and mysam are two families


def test_gap_pair_follows_the_names_families():
    assert _gap_model_pair(["mysam-large", "sam2.1-tiny", "mysam-tiny"]) == ("mysam-tiny", "mysam-large")
    assert _gap_model_pair(["sam2.1_hiera_tiny", "sam2.1-large"]) == ("sam2.1_hiera_tiny", "sam2.1-large")
    assert _gap_model_pair(["sam2-tiny", "sam2.1-large"]) is None


def test_extraction_runs_a_click_map_card_through_its_map(cards, dataset, tmp_path):
    """A click-map card's rows differ from the same weights prompted sparsely: the map went with every prompt."""
    from usam.model_card import load_model_card

    sparse = load_model_card(cards["tiny"])
    clicky = ModelCard(**{**vars(sparse), "name": "clicky-tiny", "prompting": ClickMapPrompting(4.0, 5.0, 32)})
    clicky_path = save_model_card(clicky, tmp_path / "clicky-tiny.json")
    assert _extract(dataset, tmp_path / "a", cards["tiny"]) == 0
    assert _extract(dataset, tmp_path / "b", clicky_path) == 0
    first = read_table(tmp_path / "a", columns=["iou_token"]).column("iou_token").to_pylist()
    second = read_table(tmp_path / "b", columns=["iou_token"]).column("iou_token").to_pylist()
    assert len(first) == len(second) == 4
    assert not np.allclose(np.array(first), np.array(second))
