"""``usam predict --backend transformers``, and the one-line error when transformers is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_OVERRIDE_ARGS, build_small_sam2, run_cli
from usam.errors import UsamError
from usam.heads import random_heads
from usam.transformers_adapter import INSTALL_HINT, default_processor, import_transformers, sam2_to_transformers

SOURCE = Path(__file__).resolve().parents[2] / "src"

BLOCK_TRANSFORMERS = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
"""


def test_without_transformers_the_cli_names_what_to_install(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    script = BLOCK_TRANSFORMERS + (
        "from usam.cli import main\n"
        f"sys.exit(main(['predict', {str(tmp_path / 'photo.png')!r}, '--backend', 'transformers', '--model', "
        f"'facebook/sam2.1-hiera-tiny', '--point', '3,3', '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120, check=False
    )
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("usam: error: ")
    assert INSTALL_HINT in lines[0]
    assert "Traceback" not in completed.stderr


def test_without_transformers_the_api_raises_a_usam_error():
    script = BLOCK_TRANSFORMERS + (
        "from usam.errors import UsamError\n"
        "from usam.transformers_adapter import TransformersImagePredictor\n"  # importing the adapter still works
        "try:\n"
        "    TransformersImagePredictor.from_pretrained('facebook/sam2.1-hiera-tiny')\n"
        "except UsamError as error:\n"
        "    print(error)\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert INSTALL_HINT in completed.stdout


def _has_transformers() -> bool:
    try:
        import_transformers()
    except UsamError:
        return False
    return True


needs_transformers = pytest.mark.skipif(
    not _has_transformers(), reason="transformers is not installed (pip install 'usam[transformers]')"
)


@needs_transformers
def test_predict_with_the_transformers_backend_writes_what_the_sam2_backend_writes(tmp_path, capsys):
    sam_model = build_small_sam2(seed=6)
    torch.save({"model": sam_model.state_dict()}, tmp_path / "small.pt")
    converted = sam2_to_transformers(sam_model)
    converted.save_pretrained(tmp_path / "hf")
    default_processor(converted).save_pretrained(tmp_path / "hf")
    random_heads(seed=3).save(tmp_path / "heads.safetensors")
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    prompts = ["--box", "5,5,40,30", "--box", "30,20,70,55", "--heads", tmp_path / "heads.safetensors"]
    records = {}
    for backend, model_args in {
        "sam2": ["--checkpoint", tmp_path / "small.pt", *SMALL_OVERRIDE_ARGS],
        "transformers": ["--backend", "transformers", "--model", tmp_path / "hf"],
    }.items():
        out = tmp_path / backend
        status, _, err = run_cli(["predict", tmp_path / "photo.png", *model_args, *prompts, "--out", out], capsys)
        assert status == 0, err
        records[backend] = json.loads((out / "photo.usam.json").read_text())
    assert records["transformers"]["backend"] == "transformers"
    sam2_objects, transformers_objects = records["sam2"]["objects"], records["transformers"]["objects"]
    assert len(sam2_objects) == len(transformers_objects) == 2
    for expected, actual in zip(sam2_objects, transformers_objects, strict=True):
        assert actual["prompt"] == expected["prompt"]
        for expected_mask, actual_mask in zip(expected["masks"], actual["masks"], strict=True):
            assert actual_mask["segmentation"] == expected_mask["segmentation"]
            assert actual_mask["sam_score"] == pytest.approx(expected_mask["sam_score"], abs=1e-5)
            for name, value in expected_mask["uncertainty"].items():
                assert actual_mask["uncertainty"][name] == pytest.approx(value, abs=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "sam2.1-tiny"], "Hugging Face id"),
        (["--model", "facebook/sam2.1-hiera-tiny", "--checkpoint", "x.pt"], "--checkpoint"),
    ],
)
def test_transformers_backend_refuses_sam2_options(tmp_path, capsys, extra, message):
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    argv = ["predict", tmp_path / "photo.png", "--backend", "transformers", *extra, "--point", "3,3"]
    status, _, err = run_cli([*argv, "--out", tmp_path / "out"], capsys)
    assert status == 2
    assert err.startswith("usam: error: ")
    assert message in err
