"""``usam evaluate`` of heads that read SAM2's scalar signals: their own measure, and the store's version matters."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_evaluate import FAST_TRAINING, write_synthetic_store

from usam.errors import StoreError
from usam.evaluation import run_evaluation
from usam.heads import INPUTS_OF_VARIANT, InputsVariant
from usam.store import STORE_FILE_NAME, row_schema
from usam.training import load_training_data, train_heads


@pytest.fixture(scope="module")
def signal_heads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate_signals")
    write_synthetic_store(folder / "store")
    data = load_training_data(
        folder / "store", ["iou_tiny", "task_gap"], inputs=INPUTS_OF_VARIANT[InputsVariant.TOKENS_SIGNALS]
    )
    heads, _ = train_heads(data, hyper_parameters=FAST_TRAINING, validation_fraction=0, progress=False)
    heads.save(folder / "heads.safetensors")
    return folder


def test_signal_heads_are_evaluated_as_their_own_measure(signal_heads, tmp_path):
    result = run_evaluation(
        signal_heads / "store", signal_heads / "heads.safetensors", tmp_path, seeds=2, ablation=False, progress=False
    ).to_json()
    assert result["heads_metadata"]["inputs_variant"] == "tokens+signals"
    task = result["scenarios"]["task_supervision"]["measures"]["task_gap"]
    assert task["label"] == "USAM task_gap [tokens+signals]"
    assert task["num_objects"] > 0
    assert "USAM task_gap [tokens+signals]" in (tmp_path / "report.md").read_text()


def test_a_version_1_store_refuses_signal_heads_saying_how_to_re_extract(signal_heads, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    schema = row_schema(schema_version=1)
    for path in (signal_heads / "store").glob("part-*.parquet"):
        table = pq.read_table(path).select(schema.names)
        pq.write_table(pa.Table.from_arrays(table.columns, schema=schema), old / path.name)
    content = json.loads((signal_heads / "store" / STORE_FILE_NAME).read_text())
    (old / STORE_FILE_NAME).write_text(json.dumps({**content, "schema_version": 1}))
    with pytest.raises(StoreError, match=r"schema version 1.*evaluating heads that read signals.*usam extract"):
        run_evaluation(old, signal_heads / "heads.safetensors", tmp_path / "out", ablation=False, progress=False)
