"""Tests for usam.training: learning, split by image, reproducibility, store reading, pairing, targets, HPO."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from usam.errors import InvalidInputError, StoreError
from usam.head_table import GAP_HEAD_NAMES, HEAD_NAMES
from usam.heads import HeadsMetadata, UncertaintyHeads, load_heads
from usam.store import StoreWriter, row_schema
from usam.training import (
    HPO_SEARCH_SPACE,
    PAPER_DEFAULTS,
    HyperParameters,
    TrainingData,
    _GroupWorkspace,
    _HeadPlan,
    best_mask_token,
    load_training_data,
    paper_hyper_parameters,
    split_by_image,
    train_from_store,
    train_heads,
    tune_hyper_parameters,
)

TOKEN = 256


# Synthetic data --------------------------------------------------------------------------------------------


def synthetic_data(rows=6000, dim=32, rows_per_image=3, noise=0.01, seed=0, sparse_heads=("iou_small", "task_gap")):
    """Features x ~ N(0, 1); each head's target is sigmoid(1.5 tanh(x.u) + 0.5 (x.v)^2 - 0.5) + noise.

    The heads in ``sparse_heads`` use only about half of the rows (NaN elsewhere), so heads have different row
    counts, as the size heads of a store do.
    """
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, dim)).astype(np.float32)
    targets = {}
    for name in HEAD_NAMES:
        u, v = rng.standard_normal((2, dim))
        u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
        logit = 1.5 * np.tanh(features @ u) + 0.5 * (features @ v) ** 2 - 0.5
        values = np.clip(1 / (1 + np.exp(-logit)) + noise * rng.standard_normal(rows), 0, 1)
        if name in sparse_heads:
            values[rng.random(rows) < 0.5] = np.nan
        targets[name] = values
    image_keys = np.array([f"img{index // rows_per_image:05d}" for index in range(rows)])
    return TrainingData.from_arrays(features, image_keys, targets)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_learns_a_known_function_for_all_nine_heads_at_once(precision):
    data = synthetic_data()
    hyper = {name: HyperParameters(lr=0.05, epochs=24, batch_size=64, momentum=0.9) for name in HEAD_NAMES}
    # Two groups (another batch size and epoch count) with their own learning rates and momenta.
    hyper["task_gap"] = HyperParameters(lr=0.08, epochs=30, batch_size=48, momentum=0.85)
    hyper["prompt_gap"] = HyperParameters(lr=0.08, epochs=30, batch_size=48, momentum=0.8)
    heads, report = train_heads(
        data, hyper_parameters=hyper, seed=0, hidden_dim=64, progress=False, precision=precision
    )

    assert heads.names == list(HEAD_NAMES)
    assert report["precision"] == precision
    assert report["device"] == "cpu"
    assert heads.weight1.dtype == torch.float32
    for name in HEAD_NAMES:
        entry = report["heads"][name]
        assert entry["validation"]["r2"] >= 0.9, (name, entry["validation"])
        assert entry["validation"]["pearson"] >= 0.95, name
        assert entry["hyper_parameters"] == hyper[name].to_dict()
        assert 1 <= entry["best_epoch"] <= hyper[name].epochs
        best = entry["validation_mse_per_epoch"][entry["best_epoch"] - 1]
        assert best == min(entry["validation_mse_per_epoch"])
        assert math.isclose(entry["validation"]["mse"], best, rel_tol=1e-4)
    assert report["data"]["rows"]["iou_small"] < report["data"]["rows"]["iou_tiny"]
    assert heads.metadata.training == report

    # The returned module reproduces the reported validation error through its own forward pass.
    is_validation = split_by_image(data, 0.1, seed=0)
    head = data.heads["model_gap"]
    held_out = head.rows[is_validation[data.image_ids[head.rows]]]
    predicted = heads(torch.from_numpy(data.features[held_out]))[HEAD_NAMES.index("model_gap")].numpy() + 0.5
    targets = head.targets[is_validation[data.image_ids[head.rows]]]
    assert math.isclose(
        float(np.mean((predicted - targets) ** 2)), report["heads"]["model_gap"]["validation"]["mse"], rel_tol=1e-3
    )


def test_hand_written_step_equals_autograd_and_torch_sgd():
    torch.manual_seed(0)
    rows, dim, hidden, batch = 40, 6, 5, 8
    features = torch.randn(rows, dim)
    names = ["iou_tiny", "task_gap"]
    hyper = [
        HyperParameters(lr=0.3, epochs=1, batch_size=batch, momentum=0.5, weight_decay=0.01),
        HyperParameters(lr=0.1, epochs=1, batch_size=batch, momentum=0.9, weight_decay=0.0),
    ]
    module = UncertaintyHeads(HeadsMetadata(names=names, token_dim=3, hidden_dim=hidden))
    references = []
    for name, hp in zip(names, hyper, strict=True):
        state = module.head_state_dict(name)
        mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        mlp.load_state_dict(
            {
                key.replace("layers.0", "0").replace("layers.1", "2").replace("layers.2", "4"): value
                for key, value in state.items()
            }
        )
        optimizer = torch.optim.SGD(mlp.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        references.append((mlp, optimizer))
    plans = [
        _HeadPlan(name, hp, np.arange(1), np.zeros(1), np.arange(0), np.zeros(0))
        for name, hp in zip(names, hyper, strict=True)
    ]
    workspace = _GroupWorkspace(module, features, batch, plans)

    generator = torch.Generator().manual_seed(1)
    for active in (2, 2, 1, 2):  # the second head sits out one step, as a head whose epoch is over
        index = torch.randint(0, rows, (active, batch), generator=generator)
        targets = torch.rand(active, batch, generator=generator)
        weights = torch.full((active, batch), 1.0 / batch)
        weights[:, -3:] = 0  # padding of a partial batch: 5 real rows
        weights[:, :5] = 1.0 / 5
        with torch.no_grad():
            losses = workspace.step(active, index, targets, weights)
        for head in range(active):
            mlp, optimizer = references[head]
            optimizer.zero_grad()
            output = torch.sigmoid(mlp(features[index[head, :5]])).squeeze(1)
            loss = nn.functional.mse_loss(output, targets[head, :5])
            loss.backward()
            optimizer.step()
            assert math.isclose(losses[head].item(), loss.item(), rel_tol=1e-5)
    for name, (mlp, _) in zip(names, references, strict=True):
        state = module.head_state_dict(name)
        torch.testing.assert_close(state["layers.0.weight"], mlp[0].weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["layers.1.weight"], mlp[2].weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["layers.2.weight"], mlp[4].weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["layers.2.bias"], mlp[4].bias, rtol=1e-5, atol=1e-6)


def _reference_mlp(module: UncertaintyHeads, name: str) -> nn.Sequential:
    """The head as the authors' nn.Sequential, for autograd to differentiate."""
    state = module.head_state_dict(name)
    _, hidden, dim = module.weight1.shape
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    renamed = {"layers.0": "0", "layers.1": "2", "layers.2": "4"}
    mlp.load_state_dict({renamed[key[:8]] + key[8:]: value for key, value in state.items()})
    return mlp


def test_bfloat16_step_matches_autograd_under_autocast():
    """Mixed precision gives torch.autocast(bfloat16)'s gradients up to rounding; they differ from float32's."""
    torch.manual_seed(0)
    rows, dim, hidden, batch = 64, 32, 48, 16
    features = torch.randn(rows, dim)
    names = ["iou_tiny", "task_gap"]
    hyper = HyperParameters(lr=0.1, epochs=1, batch_size=batch, momentum=0.0, weight_decay=0.0)
    plans = [_HeadPlan(name, hyper, np.arange(1), np.zeros(1), np.arange(0), np.zeros(0)) for name in names]
    module = UncertaintyHeads(HeadsMetadata(names=names, token_dim=dim // 2, hidden_dim=hidden))
    references = [_reference_mlp(module, name) for name in names]
    workspace = _GroupWorkspace(module, features, batch, plans, "bfloat16")
    generator = torch.Generator().manual_seed(2)
    index = torch.randint(0, rows, (2, batch), generator=generator)
    targets = torch.rand(2, batch, generator=generator)
    with torch.no_grad():
        losses = workspace.step(2, index, targets, torch.full((2, batch), 1.0 / batch))

    for head, mlp in enumerate(references):
        gradients = {}
        for mixed in (False, True):
            mlp.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                logits = mlp(features[index[head]])
            loss = nn.functional.mse_loss(torch.sigmoid(logits.float()).squeeze(1), targets[head])
            loss.backward()
            gradients[mixed] = [mlp[layer].weight.grad.clone() for layer in (0, 2, 4)]
        assert math.isclose(losses[head].item(), loss.item(), rel_tol=0.01)
        # With no momentum and no weight decay the gradient buffers hold the plain gradients.
        found = [workspace.gradients[0][head], workspace.gradients[2][head], workspace.gradients[4][head][None]]
        for ours, autocast, full in zip(found, gradients[True], gradients[False], strict=True):
            assert ours.dtype == torch.float32
            scale = full.norm()
            # bfloat16 keeps 8 bits: each rounding is off by up to 0.4 %, and six roundings in a chain, summed
            # with cancellation over the batch, left up to 6 % here (autocast itself is 4 % off float32). A
            # wrong transpose, slope or scale is off by about 100 %.
            assert (ours - autocast).norm() < 0.1 * scale
            assert (ours - full).norm() < 0.1 * scale
            assert (ours - full).norm() > 1e-3 * scale  # the products did run in bfloat16
    for parameter in module.parameters():
        assert parameter.dtype == torch.float32


def test_split_is_by_image_and_training_is_reproducible():
    data = synthetic_data(rows=900, rows_per_image=5)
    hyper = HyperParameters(lr=0.05, epochs=3, batch_size=32, momentum=0.9)
    is_validation = split_by_image(data, 0.2, seed=3)
    assert is_validation.sum() == round(0.2 * len(data.image_keys))
    for name, head in data.heads.items():
        images = data.image_ids[head.rows]
        train_images = set(images[~is_validation[images]])
        validation_images = set(images[is_validation[images]])
        assert train_images, name
        assert validation_images, name
        assert not train_images & validation_images

    first, report = train_heads(
        data, hyper_parameters=hyper, seed=3, validation_fraction=0.2, hidden_dim=32, progress=False
    )
    again, _ = train_heads(data, hyper_parameters=hyper, seed=3, validation_fraction=0.2, hidden_dim=32, progress=False)
    other, _ = train_heads(data, hyper_parameters=hyper, seed=4, validation_fraction=0.2, hidden_dim=32, progress=False)
    for key, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    assert not torch.equal(first.weight1, other.weight1)
    assert report["validation_images"] == int(is_validation.sum())
    assert report["train_images"] + report["validation_images"] == len(data.image_keys)
    assert report["seed"] == 3
    assert report["validation_fraction"] == 0.2
    total = {name: report["data"]["train_rows"][name] + report["data"]["validation_rows"][name] for name in HEAD_NAMES}
    assert total == report["data"]["rows"]


def test_a_head_trains_to_the_same_weights_alone_or_with_others():
    data = synthetic_data(rows=600)
    hyper = HyperParameters(lr=0.05, epochs=2, batch_size=32, momentum=0.9)
    together, _ = train_heads(data, hyper_parameters=hyper, seed=1, hidden_dim=16, progress=False)
    alone, _ = train_heads(data.subset(["task_gap"]), hyper_parameters=hyper, seed=1, hidden_dim=16, progress=False)
    for key, tensor in alone.head_state_dict("task_gap").items():
        torch.testing.assert_close(tensor, together.head_state_dict("task_gap")[key], rtol=1e-5, atol=1e-6)


def test_no_validation_keeps_last_epoch_and_progress_bar_shows_loss(capsys):
    data = synthetic_data(rows=300).subset(["iou_tiny", "model_gap"])
    hyper = HyperParameters(lr=0.05, epochs=2, batch_size=32, momentum=0.5)
    _, report = train_heads(data, hyper_parameters=hyper, validation_fraction=0.0, hidden_dim=16, progress=True)
    assert report["heads"]["iou_tiny"]["best_epoch"] == 2
    assert report["heads"]["iou_tiny"]["validation"] is None
    assert report["validation_images"] == 0
    assert "loss" in capsys.readouterr().err


def test_divergence_and_bad_arguments_are_reported():
    data = synthetic_data(rows=300).subset(["iou_tiny"])
    with pytest.raises(InvalidInputError, match=r"diverged.*iou_tiny.*lower the learning rate"):
        train_heads(
            data,
            hyper_parameters=HyperParameters(lr=1e30, epochs=2, batch_size=16, momentum=0.5),
            hidden_dim=8,
            progress=False,
        )
    with pytest.raises(InvalidInputError, match="no hyper-parameters for head"):
        train_heads(data, hyper_parameters={}, progress=False)
    with pytest.raises(InvalidInputError, match="validation_fraction"):
        train_heads(data, hyper_parameters=HyperParameters(0.01, 1, 8, 0.5), validation_fraction=1.0)
    with pytest.raises(InvalidInputError, match="precision must be one of 'float32', 'bfloat16'"):
        train_heads(data, hyper_parameters=HyperParameters(0.01, 1, 8, 0.5), precision="float16", progress=False)
    with pytest.raises(InvalidInputError, match="not a torch device"):
        train_heads(data, hyper_parameters=HyperParameters(0.01, 1, 8, 0.5), device="gpu", progress=False)
    with pytest.raises(InvalidInputError, match="momentum"):
        HyperParameters(lr=0.01, epochs=1, batch_size=8, momentum=1.5)
    with pytest.raises(InvalidInputError, match="epochs"):
        HyperParameters(lr=0.01, epochs=0, batch_size=8, momentum=0.5)
    one_image = TrainingData.from_arrays(np.zeros((4, 2), np.float32), ["a"] * 4, {"iou_tiny": np.full(4, 0.5)})
    with pytest.raises(InvalidInputError, match="image"):
        train_heads(one_image, hyper_parameters=HyperParameters(0.01, 1, 8, 0.5), progress=False)


def test_paper_defaults():
    assert set(PAPER_DEFAULTS) == {"coco", "ade20k", "sa-v", "davis"}
    davis = paper_hyper_parameters("DAVIS")
    assert set(davis) == set(HEAD_NAMES)
    assert davis["task_gap"] == HyperParameters(lr=0.029406075389, epochs=55, batch_size=158, momentum=0.7093735218048)
    coco = paper_hyper_parameters("coco", ["iou_tiny", "iou_large"])
    assert (coco["iou_tiny"].batch_size, coco["iou_tiny"].epochs, coco["iou_large"].epochs) == (189, 36, 35)
    assert coco["iou_tiny"].weight_decay == 1e-3
    ade = paper_hyper_parameters("ade20k", ["iou_small"])["iou_small"]
    assert (ade.batch_size, ade.epochs, ade.lr, ade.momentum) == (106, 79, 0.0013075788956, 0.8303298246553)
    assert paper_hyper_parameters("SA-V", ["model_gap"])["model_gap"].epochs == 9
    assert paper_hyper_parameters("sav", ["model_gap"])["model_gap"].batch_size == 193
    with pytest.raises(InvalidInputError, match="no paper hyper-parameters"):
        paper_hyper_parameters("kitti")


# Store data --------------------------------------------------------------------------------------------------


def store_columns(specs):
    """A minimal token-store table. Each spec: image, object, model, best mask index, and optional targets.

    Tokens encode where they come from: iou_token = 1000 * row; mask token j = 1000 * row + 10 * (j + 1), so a
    feature row tells which row and which mask token it was built from.
    """
    columns = {
        name: []
        for name in (
            "dataset",
            "image_key",
            "object_id",
            "model",
            "iou_token",
            "mask_tokens",
            "mask_ious",
            "iou",
            "unsupervised_iou",
            "iou_dense_prompt",
            *GAP_HEAD_NAMES,
        )
    }
    for row, spec in enumerate(specs):
        image, obj, model, best = spec[:4]
        targets = spec[4] if len(spec) > 4 else {}
        ious = np.full(3, 0.2, np.float32)
        ious[best] = 0.9
        columns["dataset"].append("coco")
        columns["image_key"].append(image)
        columns["object_id"].append(obj)
        columns["model"].append(model)
        columns["iou_token"].append(np.full(TOKEN, 1000.0 * row, np.float32))
        columns["mask_tokens"].append(np.repeat(1000.0 * row + 10.0 * np.arange(1, 5), TOKEN).astype(np.float32))
        columns["mask_ious"].append(ious)
        columns["iou"].append(targets.get("iou", 0.9))
        columns["unsupervised_iou"].append(targets.get("unsupervised_iou", 0.5))
        columns["iou_dense_prompt"].append(targets.get("iou_dense_prompt", 0.7))
        for gap in GAP_HEAD_NAMES:
            columns[gap].append(targets.get(gap, 0.1))
    return columns


def store_table(specs, token_type=None):
    token_type = token_type or pa.float32()
    columns = store_columns(specs)
    arrays = {}
    for name, values in columns.items():
        if name in ("iou_token", "mask_tokens", "mask_ious"):
            flat = np.concatenate(values)
            value_type = pa.float32() if name == "mask_ious" else token_type
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), len(values[0]))
        elif name in ("dataset", "image_key", "object_id", "model"):
            arrays[name] = pa.array(values, type=pa.string())
        else:
            arrays[name] = pa.array(values, type=pa.float32())
    return pa.table(arrays)


def row_of(data, feature_row):
    return round(float(data.features[feature_row, 0]) / 1000.0) if data.inputs[0] == "iou_token" else None


def test_pairing_picks_the_token_of_the_best_mask():
    specs = [("img0", f"obj{best}", "sam2.1-tiny", best) for best in (0, 1, 2)]
    table = store_table(specs)
    for pairing, offset in (("true", 1), ("as-released", 0)):
        data = load_training_data(table, ["iou_tiny"], pairing=pairing)
        assert data.pairing == pairing
        rows = data.heads["iou_tiny"].rows
        for feature_row in rows:
            source_row = row_of(data, feature_row)
            best = specs[source_row][3]
            token = best + offset  # mask token index 0..3
            np.testing.assert_array_equal(data.features[feature_row, :TOKEN], 1000.0 * source_row)
            np.testing.assert_array_equal(data.features[feature_row, TOKEN:], 1000.0 * source_row + 10.0 * (token + 1))
    np.testing.assert_array_equal(best_mask_token(np.array([[0.1, np.nan, 0.3], [0.5, 0.2, 0.1]]), "true"), [3, 1])

    only_mask = load_training_data(table, ["iou_tiny"], pairing="as-released", inputs=["mask_token"])
    assert only_mask.features.shape == (3, TOKEN)
    assert sorted(only_mask.features[:, 0] % 1000) == [10.0, 20.0, 30.0]  # tokens 0, 1, 2 for best 0, 1, 2
    only_iou = load_training_data(table, ["iou_tiny"], inputs=["iou_token"])
    assert only_iou.features.shape == (3, TOKEN)
    assert only_iou.inputs == ("iou_token",)


def test_targets_gap_clipping_nulls_and_rows_per_size():
    specs = [
        ("img0", "a", "sam2.1-tiny", 0, {"iou": 0.8, "model_gap": 0.7, "task_gap": None}),
        ("img0", "a", "sam2.1-large", 0, {"iou": 0.6, "model_gap": -0.7, "task_gap": 0.2}),
        ("img1", "b", "sam2.1-tiny", 1, {"iou": 0.4, "model_gap": 0.1, "task_gap": -0.1, "unsupervised_iou": None}),
        ("img1", "b", "sam2.1-base-plus", 2, {"iou": 0.3, "model_gap": 0.0, "task_gap": None}),
    ]
    table = store_table(specs)
    data = load_training_data(
        table, ["iou_tiny", "iou_large", "iou_base_plus", "iou_unsupervised", "model_gap", "task_gap"]
    )

    def source_rows(name):
        return [row_of(data, row) for row in data.heads[name].rows]

    # Rows come sorted by (dataset, image, object, model): "sam2.1-large" sorts before "sam2.1-tiny".
    assert source_rows("iou_tiny") == [0, 2]
    assert source_rows("iou_large") == [1]
    assert source_rows("iou_base_plus") == [3]
    np.testing.assert_allclose(data.heads["iou_tiny"].targets, [0.8, 0.4])
    assert source_rows("model_gap") == [1, 0, 3, 2]
    np.testing.assert_allclose(data.heads["model_gap"].targets, [0.0, 1.0, 0.5, 0.6])  # clip(gap + 0.5, 0, 1)
    assert source_rows("task_gap") == [1, 2]  # null targets dropped
    np.testing.assert_allclose(data.heads["task_gap"].targets, [0.7, 0.4])
    assert source_rows("iou_unsupervised") == [1, 0, 3]
    assert data.source["rows"]["task_gap"] == 2
    assert data.sam2_version == "sam2.1"
    assert list(data.image_keys) == ["coco/img0", "coco/img1"]

    pooled = load_training_data(table, ["iou_tiny", "iou_large"], pool_sizes=True)
    assert [row_of(pooled, row) for row in pooled.heads["iou_large"].rows] == [1, 0, 3, 2]
    assert pooled.source["pool_sizes"] is True

    chosen = load_training_data(table, ["iou_tiny", "model_gap"], models=["sam2.1-tiny"])
    assert [row_of(chosen, row) for row in chosen.heads["model_gap"].rows] == [0, 2]
    assert chosen.source["models"] == ["sam2.1-tiny"]

    by_default = load_training_data(table)  # every head with rows; no small model in the table
    assert "iou_small" not in by_default.heads
    assert by_default.source["skipped_heads"] == ["iou_small"]

    with pytest.raises(InvalidInputError, match="iou_small"):
        load_training_data(table, ["iou_small"])
    with pytest.raises(InvalidInputError, match="not in"):
        load_training_data(table, ["iou_tiny"], models=["sam2.1-huge"])
    with pytest.raises(InvalidInputError, match="unknown head"):
        load_training_data(table, ["iou_medium"])
    with pytest.raises(InvalidInputError, match="pairing"):
        load_training_data(table, ["iou_tiny"], pairing="shifted")
    with pytest.raises(StoreError, match="mask_tokens"):
        load_training_data(table.drop_columns(["mask_tokens"]), ["iou_tiny"])


def test_float16_tokens_are_read_as_float32():
    table = store_table([("img0", "a", "sam2.1-tiny", 1)], token_type=pa.float16())
    data = load_training_data(table, ["iou_tiny"])
    assert data.features.dtype == np.float32
    assert data.features[0, TOKEN] == 30.0


def store_row(image, obj, model, rng):
    values = {"image_key": image, "object_id": obj, "model": model, "dataset": "coco", "split": "train"}
    row = {}
    for field in row_schema():
        if pa.types.is_string(field.type):
            row[field.name] = values[field.name]
        elif pa.types.is_integer(field.type):
            row[field.name] = 100
        elif pa.types.is_fixed_size_list(field.type):
            row[field.name] = rng.standard_normal(field.type.list_size).astype(np.float32)
        else:
            row[field.name] = float(rng.random()) - (0.5 if field.name.endswith("_gap") else 0.0)
    # Targets that depend on the tokens, so that something can be learned.
    row["iou"] = float(1 / (1 + np.exp(-row["iou_token"][:8].sum())))
    return row


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "tokens"
    rng = np.random.default_rng(0)
    with StoreWriter(root, rows_per_part=16) as writer:
        for image in range(30):
            rows = [
                store_row(f"img{image:03d}", f"obj{obj}", model, rng)
                for obj in range(2)
                for model in ("sam2.1-tiny", "sam2.1-large")
            ]
            writer.add_image(f"img{image:03d}", rows)
    return root


def test_train_from_store_writes_heads_that_load_with_their_metadata(token_store, tmp_path):
    out = train_from_store(
        token_store,
        tmp_path / "heads.safetensors",
        heads=["iou_tiny", "iou_large", "task_gap"],
        pairing="as-released",
        dataset_defaults="sa-v",
        seed=5,
        progress=False,
    )
    heads = load_heads(out)
    assert heads.names == ["iou_tiny", "iou_large", "task_gap"]
    assert heads.metadata.pairing == "as-released"
    assert heads.metadata.sam2_version == "sam2.1"
    training = heads.metadata.training
    assert training["data"]["store"] == str(token_store)
    assert training["data"]["rows"] == {"iou_tiny": 60, "iou_large": 60, "task_gap": 120}
    assert training["data"]["models"] == ["sam2.1-large", "sam2.1-tiny"]
    assert training["data"]["pool_sizes"] is False
    assert training["seed"] == 5
    assert training["validation_fraction"] == 0.1
    assert training["validation_images"] == 3
    assert training["hyper_parameter_source"] == {"method": "paper defaults", "dataset": "sa-v"}
    for name in heads.names:
        entry = training["heads"][name]
        assert entry["hyper_parameters"]["epochs"] == 9
        assert entry["best_epoch"] in range(1, 10)
        assert set(entry["validation"]) == {"mse", "mae", "r2", "pearson", "num_rows"}


def test_memory_mapped_features_equal_in_memory_ones(token_store, tmp_path):
    in_memory = load_training_data(token_store, ["iou_tiny", "model_gap"])
    mapped = load_training_data(token_store, ["iou_tiny", "model_gap"], cache_dir=tmp_path / "cache")
    assert isinstance(mapped.features, np.memmap)
    np.testing.assert_array_equal(mapped.features, in_memory.features)
    for name in in_memory.heads:
        np.testing.assert_array_equal(mapped.head_features(name), in_memory.head_features(name))
        np.testing.assert_array_equal(mapped.heads[name].targets, in_memory.heads[name].targets)
    assert not list((tmp_path / "cache").iterdir()), "the cache file should be gone once mapped"


def test_hpo_records_the_chosen_values(token_store, tmp_path):
    out = train_from_store(
        token_store, tmp_path / "tuned.safetensors", heads=["iou_tiny"], hpo_trials=2, seed=1, progress=False
    )
    training = load_heads(out).metadata.training
    source = training["hyper_parameter_source"]
    assert source["method"] == "optuna TPESampler"
    assert source["trials_per_head"] == 2
    chosen = source["chosen"]["iou_tiny"]
    assert chosen == training["heads"]["iou_tiny"]["hyper_parameters"]
    low, high = HPO_SEARCH_SPACE["lr"]
    assert low <= chosen["lr"] <= high
    assert HPO_SEARCH_SPACE["epochs"][0] <= chosen["epochs"] <= HPO_SEARCH_SPACE["epochs"][1]
    assert HPO_SEARCH_SPACE["batch_size"][0] <= chosen["batch_size"] <= HPO_SEARCH_SPACE["batch_size"][1]

    data = load_training_data(token_store, ["iou_tiny"])
    assert tune_hyper_parameters(data, "iou_tiny", 2, seed=1).to_dict() == chosen  # seeded: the same choice
