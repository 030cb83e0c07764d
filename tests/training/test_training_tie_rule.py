"""Tests for training's store reading through usam.store.StoreReader: the store's tie rule and token sizes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import write_tied_store
from usam.cli import main
from usam.errors import StoreError
from usam.heads import load_heads
from usam.store import StoreReader
from usam.training import load_training_data


def mask_token_read(data, head="iou_tiny"):
    """Which mask token (0-based) every row of a head was given, from a mask-token-only feature matrix."""
    values = np.unique(data.head_features(head))
    assert values.size == 1, "every row of a tied store should give the same token"
    return int(values[0]) - 1


def test_load_training_data_defaults_to_the_tie_rule_the_store_records(tmp_path):
    store = write_tied_store(tmp_path / "store", metadata={"tie_rule": "last"})
    options = {"heads": ["iou_tiny"], "inputs": ["mask_token"], "pairing": "as-released"}

    recorded = load_training_data(store, **options)
    assert mask_token_read(recorded) == 1  # the last of the tied outputs 0 and 1
    assert recorded.source["tie_rule"] == "last"

    given = load_training_data(store, **options, tie_rule="first")  # an explicit tie rule wins
    assert mask_token_read(given) == 0
    assert given.source["tie_rule"] == "first"

    unrecorded = load_training_data(write_tied_store(tmp_path / "plain"), **options)
    assert mask_token_read(unrecorded) == 0
    assert unrecorded.source["tie_rule"] == "first"


def test_load_training_data_reads_an_open_reader_and_its_token_sizes(tmp_path):
    store = write_tied_store(tmp_path / "store", token_dim=8, num_mask_tokens=3)
    reader = StoreReader(store)
    data = load_training_data(reader, ["iou_tiny"], pairing="true")
    assert data.token_dim == 8
    assert data.features.shape == (4, 16)
    np.testing.assert_array_equal(data.features[:, :8], -1.0)  # the IoU token
    np.testing.assert_array_equal(data.features[:, 8:], 2.0)  # token 1: output 0, the first best, true pairing
    assert data.source["store"] == str(store)

    mask_only = load_training_data(reader, ["iou_tiny"], inputs=["mask_token"], tie_rule="last")
    assert mask_only.features.shape == (4, 8)
    assert mask_token_read(mask_only) == 2  # output 1 with the true pairing


def test_train_uses_the_stores_tie_rule_unless_one_is_given(tmp_path):
    store = write_tied_store(tmp_path / "store", metadata={"tie_rule": "last"}, images=10)
    base = ["train", "--data", str(store), "--no-progress", "--heads", "iou_tiny"]
    assert main([*base, "--out", str(tmp_path / "recorded.safetensors")]) == 0
    assert load_heads(tmp_path / "recorded.safetensors").metadata.training["tie_rule"] == "last"
    assert main([*base, "--out", str(tmp_path / "given.safetensors"), "--tie-rule", "first"]) == 0
    assert load_heads(tmp_path / "given.safetensors").metadata.training["tie_rule"] == "first"


def test_an_unknown_recorded_tie_rule_is_a_store_error(tmp_path):
    assert StoreReader.from_table(pa.table({"model": ["m"]})).tie_rule is None
    store = write_tied_store(tmp_path / "store", metadata={"tie_rule": "middle"})
    with pytest.raises(StoreError, match="records the tie rule 'middle'"):
        load_training_data(store, ["iou_tiny"])
    assert load_training_data(store, ["iou_tiny"], tie_rule="last").source["tie_rule"] == "last"
