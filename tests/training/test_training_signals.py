"""Heads that read SAM2's scalar signals: trained from a store, saved, loaded, and run by the predictor on the same
vector the store gave them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import wrap_models, write_folder_dataset
from usam.datasets import open_dataset
from usam.errors import HeadsFileError, InvalidInputError
from usam.extraction import ExtractionOptions, run_extraction
from usam.heads import HEAD_INPUTS, INPUTS_OF_VARIANT, HeadsMetadata, InputsVariant, load_heads, random_heads
from usam.predictor import UncertainSAM
from usam.signals import SIGNAL_DIM
from usam.store import read_table
from usam.training import HyperParameters, TrainingData, fill_head_features, load_training_data, train_heads

QUICK = HyperParameters(lr=0.01, epochs=2, batch_size=4, momentum=0.5)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, two_size_sam2):
    """A real store of the small tiny model (schema version 2, with signals), and that model's wrapper."""
    root = tmp_path_factory.mktemp("signals")
    reader = open_dataset("folder", write_folder_dataset(root / "data", num_images=4), "all")
    models = wrap_models({"sam2.1-tiny": two_size_sam2["sam2.1-tiny"]})
    run_extraction(reader, models, root / "store", options=ExtractionOptions(monte_carlo=False), progress=False)
    return root / "store", reader, models["sam2.1-tiny"]


@pytest.mark.parametrize("variant", list(InputsVariant))
def test_heads_of_every_inputs_variant_train_save_and_load(extracted, tmp_path, variant):
    store, _, _ = extracted
    data = load_training_data(store, ["iou_tiny", "task_gap"], inputs=INPUTS_OF_VARIANT[variant])
    reads_signals = variant is not InputsVariant.TOKENS
    assert data.features.shape[1] == 512 * (variant is not InputsVariant.SIGNALS) + SIGNAL_DIM * reads_signals
    heads, _ = train_heads(data, hyper_parameters=QUICK, validation_fraction=0, progress=False)
    loaded = load_heads(heads.save(tmp_path / "heads.safetensors"))
    assert loaded.metadata.inputs == list(INPUTS_OF_VARIANT[variant])
    assert loaded.metadata.reads_signals is reads_signals
    assert (loaded.metadata.signal_normalization is not None) is reads_signals
    if reads_signals:
        # The store's signal vectors were standardised with exactly the recorded normalisation.
        signal_part = data.features[:, -SIGNAL_DIM:]
        np.testing.assert_allclose(signal_part.mean(axis=0)[signal_part.std(axis=0) > 0.01], 0.0, atol=1e-4)


def test_the_predictor_feeds_the_heads_the_vector_the_store_gave_them(extracted):
    store, reader, model = extracted
    data = load_training_data(store, ["iou_tiny"], inputs=HEAD_INPUTS)
    heads, _ = train_heads(data, hyper_parameters=QUICK, validation_fraction=0, progress=False)
    table = read_table(store)
    features = np.empty((table.num_rows, heads.metadata.input_dim), np.float32)
    fill_head_features(table, features, tuple(HEAD_INPUTS), "true")
    features[:, -SIGNAL_DIM:] = heads.metadata.normalization.apply(features[:, -SIGNAL_DIM:])
    expected = heads(torch.from_numpy(features))[0].numpy()
    with_heads = UncertainSAM(model.predictor, heads)
    for index, row in enumerate(table.to_pylist()):
        with_heads.set_image(reader.load(row["image_key"]).image)
        result = with_heads.predict(point_coords=np.reshape(row["center_point"], (1, 2)), point_labels=np.ones(1))
        best = int(np.argmax(row["mask_ious"]))  # the store's heads read the best mask's token, as training does
        assert result.signals is not None  # heads that read signals return them without being asked
        assert result.uncertainty["iou_tiny"][best] == pytest.approx(expected[index], abs=2e-4)


def test_a_version_1_store_cannot_train_signal_heads_but_trains_token_heads(extracted, tmp_path):
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from usam.errors import StoreError
    from usam.store import STORE_FILE_NAME, row_schema

    store, _, _ = extracted
    old = tmp_path / "old"
    shutil.copytree(store, old)
    schema = row_schema(schema_version=1)
    for path in old.glob("part-*.parquet"):
        table = pq.read_table(path).select(schema.names)
        pq.write_table(pa.Table.from_arrays(table.columns, schema=schema), path)
    content = json.loads((old / STORE_FILE_NAME).read_text())
    (old / STORE_FILE_NAME).write_text(json.dumps({**content, "schema_version": 1}))
    assert load_training_data(old, ["iou_tiny"]).features.shape[1] == 512
    with pytest.raises(StoreError, match=r"schema version 1.*usam extract"):
        load_training_data(old, ["iou_tiny"], inputs=INPUTS_OF_VARIANT[InputsVariant.TOKENS_SIGNALS])


def test_heads_metadata_checks_the_signal_inputs():
    assert HeadsMetadata(names=["task_gap"]).inputs == ["iou_token", "mask_token"]  # absent = tokens
    with pytest.raises(HeadsFileError, match="signal_normalization"):
        HeadsMetadata(names=["task_gap"], inputs=["signals"])
    with pytest.raises(HeadsFileError, match="last"):
        HeadsMetadata(
            names=["task_gap"],
            inputs=["signals", "iou_token"],
            signal_normalization={"mean": [0.0] * SIGNAL_DIM, "std": [1.0] * SIGNAL_DIM},
        )
    with pytest.raises(HeadsFileError, match="malformed"):
        HeadsMetadata(names=["task_gap"], inputs=["signals"], signal_normalization={"mean": [0.0], "std": [1.0]})
    # Token heads, e.g. random or the authors', are unchanged.
    assert random_heads(["task_gap"]).metadata.input_dim == 512
    with pytest.raises(InvalidInputError, match="last"):
        TrainingData.from_arrays(
            np.zeros((2, 256 + SIGNAL_DIM), np.float32),
            ["a", "b"],
            {"task_gap": np.full(2, 0.5)},
            inputs=["signals", "iou_token"],
        )


def test_cli_train_inputs_signals(extracted, tmp_path, capsys):
    from conftest import run_cli

    store, _, _ = extracted
    out = tmp_path / "signals.safetensors"
    code, _, _ = run_cli(
        ["train", "--data", str(store), "--out", str(out), "--heads", "iou_tiny", "--inputs", "signals",
         "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert load_heads(out).metadata.inputs == ["signals"]
