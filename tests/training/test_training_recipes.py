"""Tests for usam.training's recipes: the fused AdamW step, usam's recipe learning and stopping early."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from usam.errors import InvalidInputError
from usam.heads import HeadsMetadata, UncertaintyHeads
from usam.training import (
    USAM_HYPER_PARAMETERS,
    HyperParameters,
    Recipe,
    TrainingData,
    recipe_hyper_parameters,
    train_from_store,
    train_heads,
)
from usam.training.kernel import GroupWorkspace, HeadPlan

HEADS = ["iou_tiny", "iou_large", "model_gap"]


def known_function_data(rows=3000, dim=16, seed=0):
    """Targets sigmoid(1.5 tanh(x.u) + 0.5 (x.v)^2 - 0.5) + noise, one (u, v) per head."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, dim)).astype(np.float32)
    targets = {}
    for name in HEADS:
        u, v = rng.standard_normal((2, dim))
        u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
        logit = 1.5 * np.tanh(features @ u) + 0.5 * (features @ v) ** 2 - 0.5
        targets[name] = np.clip(1 / (1 + np.exp(-logit)) + 0.01 * rng.standard_normal(rows), 0, 1)
    image_keys = np.array([f"img{index // 3:05d}" for index in range(rows)])
    return TrainingData.from_arrays(features, image_keys, targets)


def test_fused_adamw_step_matches_torch_adamw_with_a_scaled_rate():
    names = ["iou_tiny", "iou_small"]
    metadata = HeadsMetadata(names=names, token_dim=8, hidden_dim=16, inputs=["iou_token", "mask_token"])
    module = UncertaintyHeads(metadata)
    module.reset_parameters(torch.Generator().manual_seed(1))
    references = [
        {key: value.clone().requires_grad_(True) for key, value in module.head_state_dict(name).items()}
        for name in names
    ]
    hyper = HyperParameters(lr=0.01, epochs=3, batch_size=5, momentum=0, weight_decay=0.05, optimizer="adamw")
    plans = [HeadPlan(name, hyper, np.arange(5), np.zeros(5), np.arange(0), np.zeros(0)) for name in names]
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(20, 16, generator=generator)
    workspace = GroupWorkspace(module, features, 5, plans)
    optimizers = [torch.optim.AdamW(list(reference.values()), lr=0.01, weight_decay=0.05) for reference in references]
    for step, scale in enumerate([1.0, 0.3, 1.0, 0.7]):
        # Step 1 moves only the first head, so the heads' bias corrections differ afterwards.
        active = 1 if step == 1 else 2
        row_index = torch.randint(0, 20, (2, 5), generator=generator)
        targets, weights = torch.rand(2, 5, generator=generator), torch.full((2, 5), 0.2)
        workspace.step(active, row_index[:active], targets[:active], weights[:active], scale)
        for head in range(active):
            layers = list(references[head].values())
            for group in optimizers[head].param_groups:
                group["lr"] = 0.01 * scale
            optimizers[head].zero_grad()
            inputs = features[row_index[head]]
            hidden = torch.relu(inputs @ layers[0].T + layers[1])
            hidden = torch.relu(hidden @ layers[2].T + layers[3])
            logits = hidden @ layers[4].reshape(-1) + layers[5].reshape(())
            (weights[head] * (torch.sigmoid(logits) - targets[head]) ** 2).sum().backward()
            optimizers[head].step()
    for name, reference in zip(names, references, strict=True):
        for key, value in module.head_state_dict(name).items():
            torch.testing.assert_close(value, reference[key].detach().reshape(value.shape), atol=1e-6, rtol=1e-5)


def test_usam_recipe_learns_a_known_function_and_stops_early_with_its_best_epoch():
    data = known_function_data()
    hyper = dataclasses.replace(USAM_HYPER_PARAMETERS, lr=3e-3, batch_size=64, epochs=60, patience=3)
    _heads, report = train_heads(data, hyper_parameters=hyper, seed=0, hidden_dim=32, progress=False)

    assert "AdamW" in report["optimizer"]
    assert "early stopping (patience 3)" in report["optimizer"]
    for name in HEADS:
        entry = report["heads"][name]
        assert entry["validation"]["r2"] >= 0.9, (name, entry["validation"])
        history = entry["validation_mse_per_epoch"]
        # It stopped early: patience epochs after its best, long before the 60 epochs.
        assert entry["stopped_epoch"] == entry["best_epoch"] + 3 < 60
        assert entry["best_epoch"] == int(np.argmin(history[: entry["stopped_epoch"]])) + 1
        # The best epoch's weights were restored: the final metrics are those of the best epoch.
        assert entry["validation"]["mse"] == pytest.approx(history[entry["best_epoch"] - 1], rel=1e-6)
        assert entry["hyper_parameters"]["optimizer"] == "adamw"
        assert len(entry["seconds_at_epoch"]) == max(
            len(report["heads"][other]["train_loss_per_epoch"]) for other in HEADS
        )
    # The group stops once every head has stopped.
    assert len(report["heads"][HEADS[0]]["train_loss_per_epoch"]) == max(
        report["heads"][name]["stopped_epoch"] for name in HEADS
    )


def test_paper_hyper_parameters_keep_their_five_values():
    paper = recipe_hyper_parameters(Recipe.PAPER, "coco", ["iou_tiny"])["iou_tiny"]
    assert paper.is_paper_recipe
    assert set(paper.to_dict()) == {"lr", "epochs", "batch_size", "momentum", "weight_decay"}
    usam = recipe_hyper_parameters("usam", "coco", ["iou_tiny"])["iou_tiny"]
    assert usam == USAM_HYPER_PARAMETERS
    assert not usam.is_paper_recipe


@pytest.mark.parametrize("option", [{"hpo_trials": 2}, {"dataset_defaults": "coco"}])
def test_paper_only_options_refuse_the_usam_recipe(tmp_path, option):
    with pytest.raises(InvalidInputError, match="paper's recipe"):
        train_from_store(tmp_path / "store", tmp_path / "heads.safetensors", recipe="usam", **option)


def test_hyper_parameters_check_the_schedule():
    with pytest.raises(InvalidInputError, match="warmup_epochs"):
        HyperParameters(lr=1e-3, epochs=2, batch_size=8, momentum=0, warmup_epochs=2)
    with pytest.raises(InvalidInputError, match="optimizer"):
        HyperParameters(lr=1e-3, epochs=2, batch_size=8, momentum=0, optimizer="adam")
