"""Tests for usam.training's fitting: learning, the fused step against autograd, split by image, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from usam.errors import InvalidInputError
from usam.head_table import HEAD_NAMES
from usam.heads import HeadsMetadata, UncertaintyHeads
from usam.training import HyperParameters, TrainingData, split_by_image, train_heads
from usam.training.kernel import GroupWorkspace, HeadPlan

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
        HeadPlan(name, hp, np.arange(1), np.zeros(1), np.arange(0), np.zeros(0))
        for name, hp in zip(names, hyper, strict=True)
    ]
    workspace = GroupWorkspace(module, features, batch, plans)

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
    plans = [HeadPlan(name, hyper, np.arange(1), np.zeros(1), np.arange(0), np.zeros(0)) for name in names]
    module = UncertaintyHeads(HeadsMetadata(names=names, token_dim=dim // 2, hidden_dim=hidden))
    references = [_reference_mlp(module, name) for name in names]
    workspace = GroupWorkspace(module, features, batch, plans, "bfloat16")
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
