"""Tests for usam.evaluation.rows: rows read through usam.store.StoreReader, heads fed with the store's tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_tied_store
from usam.errors import InvalidInputError
from usam.evaluation.rows import EvaluatedModels, read_rows, store_models
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.store import StoreReader

TINY = "sam2.1-tiny"


def read(store, heads):
    reader = StoreReader(store)
    models = EvaluatedModels(evaluated=TINY, tiny=TINY, large=None)
    return read_rows(reader, models, heads, keep_features=True, progress=False)


@pytest.mark.parametrize(("metadata", "mask_token"), [({"tie_rule": "last"}, 2), ({}, 1), ({"tie_rule": "first"}, 1)])
def test_heads_read_the_mask_token_the_stores_tie_rule_picks(tmp_path, metadata, mask_token):
    store = write_tied_store(tmp_path / "store", metadata=metadata)
    rows = read(store, random_heads(HEAD_NAMES, seed=0, pairing="true"))
    assert rows.features is not None
    np.testing.assert_array_equal(rows.features[:, :256], -1.0)  # the IoU token
    # Outputs 0 and 1 are tied; with the true pairing output k comes from mask token k + 1 (values k + 2).
    np.testing.assert_array_equal(rows.features[:, 256:], mask_token + 1.0)


def test_rows_of_a_store_with_other_token_sizes(tmp_path):
    store = write_tied_store(tmp_path / "store", metadata={"tie_rule": "last"}, token_dim=8, num_mask_tokens=3)
    rows = read(store, random_heads(HEAD_NAMES, seed=0, pairing="as-released", token_dim=8))
    assert rows.features.shape == (4, 16)
    np.testing.assert_array_equal(rows.features[:, 8:], 2.0)  # output 1, token 1 with the as-released pairing
    assert np.isfinite(rows.head_values["iou_tiny"]).all()
    assert rows.image_names(np.arange(2)).tolist() == ["coco/img000", "coco/img001"]

    with pytest.raises(InvalidInputError, match="tokens of 256 values, the store holds tokens of 8"):
        read(store, random_heads(HEAD_NAMES, seed=0))


def test_store_models_refuses_an_empty_store(tmp_path):
    assert store_models(StoreReader(write_tied_store(tmp_path / "store"))) == [TINY]
    with pytest.raises(InvalidInputError, match="has no rows"):
        store_models(StoreReader(write_tied_store(tmp_path / "empty", images=0)))
