"""Tests for the extraction's options and safeguards: presets, precision, tie rule, identity check, Ctrl-C, shards.

Also that extraction reaches SAM2 only through usam's wrapper.
"""

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import SMALL_OVERRIDE_ARGS, TWO_SIZES, build_small_sam2, wrap_models, write_folder_dataset
from usam import sam2_adapter
from usam.cli import main
from usam.datasets import open_dataset
from usam.devices import Precision
from usam.errors import InvalidInputError, StoreError, UsamError, UsamWarning
from usam.extraction import (
    IDENTITY_KEYS,
    ExtractionInterrupted,
    ExtractionOptions,
    Extractor,
    parse_shard,
    run_extraction,
)
from usam.predictor import UncertainSAM
from usam.presets import PRESETS, Preset, TieRule
from usam.store import STORE_FILE_NAME, StoreReader

FAST = ExtractionOptions(monte_carlo=False)


@pytest.fixture(scope="module")
def sam_models(two_size_sam2):
    return two_size_sam2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("data") / "folder", num_images=2)


@pytest.fixture(scope="module")
def checkpoint_dir(two_size_checkpoint_dir):
    return two_size_checkpoint_dir


def _cli_extract(dataset, store, checkpoint_dir, *extra):
    return main(
        [
            "extract",
            "--dataset=folder",
            f"--root={dataset}",
            "--split=all",
            f"--out={store}",
            "--models",
            *TWO_SIZES,
            f"--checkpoint-dir={checkpoint_dir}",
            "--no-progress",
            "--no-monte-carlo",
            *SMALL_OVERRIDE_ARGS,
            *extra,
        ]
    )


# Options and presets ----------------------------------------------------------------------------------------


def test_options_take_their_defaults_from_the_preset():
    usam, paper = ExtractionOptions(), ExtractionOptions(preset="paper")
    assert (usam.precision_on("cuda"), usam.tie_rule) == (Precision.BFLOAT16, TieRule.FIRST)
    assert (paper.precision_on("cuda"), paper.tie_rule) == (PRESETS[Preset.PAPER].extraction_precision, TieRule.LAST)
    explicit = ExtractionOptions(preset="paper", precision="bfloat16", tie_rule="first")
    assert (explicit.precision, explicit.tie_rule) == (Precision.BFLOAT16, TieRule.FIRST)


@pytest.mark.parametrize(
    "options",
    [{"precision": "float16"}, {"tie_rule": "middle"}, {"preset": "authors"}, {"prompt_batch_size": 0}, {"seed": 1.5}],
)
def test_invalid_options_are_refused(options):
    with pytest.raises(InvalidInputError):
        ExtractionOptions(**options)


def test_cpus_default_to_float32_gpus_to_the_presets_precision_and_an_explicit_one_wins():
    assert sam2_adapter.effective_precision(torch.device("cpu")) is Precision.FLOAT32
    assert sam2_adapter.effective_precision(torch.device("cpu"), "bfloat16") is Precision.BFLOAT16
    assert sam2_adapter.effective_precision(torch.device("cuda"), "float32") is Precision.FLOAT32
    assert sam2_adapter.effective_precision(torch.device("cuda"), "bfloat16") is Precision.BFLOAT16
    assert sam2_adapter.effective_precision(torch.device("cuda")) is Precision.BFLOAT16
    assert ExtractionOptions().precision_on("cuda") is Precision.BFLOAT16
    assert ExtractionOptions(preset="paper").precision_on("cuda") is Precision.FLOAT32
    assert ExtractionOptions(preset="paper").precision_on("cpu") is Precision.FLOAT32
    assert ExtractionOptions().precision_on("cpu") is Precision.FLOAT32
    assert ExtractionOptions(precision="bfloat16").precision_on("cpu") is Precision.BFLOAT16
    with sam2_adapter.inference_context(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with sam2_adapter.inference_context(torch.device("cpu"), "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_store_records_preset_precision_and_tie_rule(dataset, sam_models, tmp_path):
    reader = open_dataset("folder", dataset, "all", limit=1)
    options = ExtractionOptions(monte_carlo=False, preset="paper", precision="bfloat16")
    models = wrap_models(sam_models)
    run_extraction(reader, models, tmp_path, options=options, progress=False)
    recorded = StoreReader(tmp_path).options
    assert recorded["preset"] == "paper"
    assert recorded["tie_rule"] == "last"
    assert recorded["precision"] == "bfloat16"  # asked explicitly: honoured on the CPU too
    assert all(model.precision is Precision.BFLOAT16 for model in models.values())


def test_token_sizes_come_from_the_models(sam_models):
    extractor = Extractor(wrap_models(sam_models), FAST)
    decoder = sam2_adapter.mask_decoder_of(sam_models["sam2.1-tiny"])
    assert extractor.token_dim == decoder.transformer_dim
    assert (
        extractor.num_mask_tokens
        == decoder.num_mask_tokens
        == sam2_adapter.num_mask_tokens_of(sam_models["sam2.1-tiny"])
    )


def test_extraction_reaches_sam2_through_the_wrapper(dataset, sam_models, monkeypatch):
    """Monte Carlo samples go through UncertainSAM.predict_masks, not SAM2's predictor API."""
    calls = []
    original = UncertainSAM.predict_masks

    def counting(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UncertainSAM, "predict_masks", counting)
    models = wrap_models(sam_models)
    for model in models.values():
        monkeypatch.setattr(model.predictor, "predict", _forbidden_outside_wrapper(model))
    sample = open_dataset("folder", dataset, "all").load("img00")
    rows = Extractor(models, ExtractionOptions(monte_carlo=True)).rows_for_sample(sample)
    assert rows
    assert len(calls) > 0


def _forbidden_outside_wrapper(model):
    original = model.predictor.predict

    def predict(*args, **kwargs):
        caller = inspect.stack()[1]
        assert Path(caller.filename).parts[-2:] == ("usam", "predictor.py"), f"SAM2 called from {caller.filename}"
        return original(*args, **kwargs)

    return predict


# The CLI's options ------------------------------------------------------------------------------------------


class _StopError(UsamError):
    pass


def _capture_build(monkeypatch, captured):
    def build_models(model_names, **kwargs):
        captured.update(model_names=list(model_names), **kwargs)
        raise _StopError("stopped after choosing the models")

    monkeypatch.setattr("usam.extraction.build_models", build_models)


def test_cli_preset_sets_the_defaults_and_explicit_options_win(dataset, tmp_path, monkeypatch):
    captured = {}
    _capture_build(monkeypatch, captured)
    base = ["extract", "--dataset=folder", f"--root={dataset}", "--split=all", f"--out={tmp_path}"]
    assert main([*base, "--preset=paper"]) == 2
    assert captured["model_names"] == list(PRESETS[Preset.PAPER].models)
    assert captured["precision"] is Precision.FLOAT32
    assert main(base) == 2
    assert captured["model_names"] == list(PRESETS[Preset.USAM].models)
    # usam's preset: bfloat16 on a GPU, float32 on a CPU.
    assert captured["precision"] is (Precision.BFLOAT16 if torch.cuda.is_available() else Precision.FLOAT32)
    assert main([*base, "--preset=paper", "--models", "sam2.1-tiny", "--precision=bfloat16"]) == 2
    assert captured["model_names"] == ["sam2.1-tiny"]
    assert captured["precision"] is Precision.BFLOAT16


def test_cli_davis_resolution_follows_the_preset(tmp_path, monkeypatch, capsys):
    opened = {}

    def open_dataset(name, root, split, **options):
        opened.update(options)
        raise _StopError("stopped after opening the dataset")

    monkeypatch.setattr("usam.datasets.open_dataset", open_dataset)
    base = ["extract", "--dataset=davis", f"--root={tmp_path}", f"--out={tmp_path / 'store'}"]
    assert main([*base, "--preset=paper"]) == 2
    assert opened["resolution"] == PRESETS[Preset.PAPER].davis_resolution
    assert main([*base, "--preset=paper", "--davis-resolution=480p"]) == 2
    assert opened["resolution"] == "480p"
    assert main([*base[:1], "--dataset=folder", *base[2:], "--davis-resolution=480p"]) == 2
    assert "--davis-resolution applies to --dataset davis only" in capsys.readouterr().err


# Identity of weights and data on resume ----------------------------------------------------------------------


def test_resume_with_other_weights_or_data_is_refused(dataset, sam_models, tmp_path):
    reader = open_dataset("folder", dataset, "all", limit=1)
    run_extraction(reader, wrap_models(sam_models), tmp_path / "store", options=FAST, progress=False)
    other_tiny = {**sam_models, "sam2.1-tiny": build_small_sam2("sam2.1-tiny", seed=7)}
    with pytest.raises(StoreError, match=r"identity\.weights\.sam2\.1-tiny\.random_weights_seed=0") as caught:
        run_extraction(reader, wrap_models(other_tiny), tmp_path / "store", options=FAST, progress=False)
    assert "new --out" in str(caught.value)
    copy = shutil.copytree(dataset, tmp_path / "copy")
    moved = open_dataset("folder", copy, "all", limit=1)
    with pytest.raises(StoreError, match=r"identity\.data\.root"):
        run_extraction(moved, wrap_models(sam_models), tmp_path / "store", options=FAST, progress=False)
    more = open_dataset("folder", dataset, "all", limit=2)
    with pytest.raises(StoreError, match=r"identity\.data\.limit=1"):
        run_extraction(more, wrap_models(sam_models), tmp_path / "store", options=FAST, progress=False)
    # The original arguments resume.
    again = run_extraction(reader, wrap_models(sam_models), tmp_path / "store", options=FAST, progress=False)
    assert again["images_before"] == 1


def test_cli_resume_with_another_checkpoint_is_refused(dataset, checkpoint_dir, tmp_path, capsys):
    store = tmp_path / "store"
    assert _cli_extract(dataset, store, checkpoint_dir, "--limit=1") == 0
    weights = StoreReader(store).options["identity"]["weights"]
    assert len(weights["sam2.1-tiny"]["checkpoint_sha256"]) == 64
    other = shutil.copytree(checkpoint_dir, tmp_path / "other")
    state = torch.load(other / "sam2.1_hiera_tiny.pt")
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1
    torch.save(state, other / "sam2.1_hiera_tiny.pt")
    capsys.readouterr()
    assert _cli_extract(dataset, store, other, "--limit=1") == 2
    error = capsys.readouterr().err
    assert error.startswith("usam: error: ")
    assert "checkpoint_sha256" in error
    assert error.count("\n") == 1


def test_store_without_identity_resumes_with_a_warning(dataset, sam_models, tmp_path, capsys):
    reader = open_dataset("folder", dataset, "all", limit=1)
    run_extraction(reader, wrap_models(sam_models), tmp_path, options=FAST, progress=False)
    # What a store of an older usam looks like: the same file without the keys recorded since.
    path = tmp_path / STORE_FILE_NAME
    content = json.loads(path.read_text())
    for key in IDENTITY_KEYS:
        del content["metadata"][key]
    path.write_text(json.dumps(content))
    more = open_dataset("folder", dataset, "all", limit=2)
    with pytest.warns(UsamWarning, match="cannot check"):
        counts = run_extraction(more, wrap_models(sam_models), tmp_path, options=FAST, progress=False)
    assert counts["images_before"] == 1


# Ctrl-C -----------------------------------------------------------------------------------------------------


def _interrupt_on_second_image(monkeypatch):
    original = Extractor.rows_for_sample
    calls = []

    def rows_for_sample(self, sample, **kwargs):
        calls.append(sample.image_key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, sample, **kwargs)

    monkeypatch.setattr(Extractor, "rows_for_sample", rows_for_sample)


def test_interrupted_extraction_keeps_the_finished_images(dataset, sam_models, tmp_path, monkeypatch):
    _interrupt_on_second_image(monkeypatch)
    reader = open_dataset("folder", dataset, "all")
    with pytest.raises(ExtractionInterrupted) as caught:
        run_extraction(reader, wrap_models(sam_models), tmp_path, options=FAST, progress=False)
    assert caught.value.images_in_store == 1
    assert caught.value.counts["images"] == 1
    assert len(set(StoreReader(tmp_path).read(["image_key"]).column("image_key").to_pylist())) == 1


def test_cli_ctrl_c_reports_what_was_kept(dataset, checkpoint_dir, tmp_path, monkeypatch, capsys):
    _interrupt_on_second_image(monkeypatch)
    assert _cli_extract(dataset, tmp_path / "store", checkpoint_dir) == 130
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "1 images in" in error[0]
    assert "run the same command again to resume" in error[0]
    monkeypatch.undo()
    assert _cli_extract(dataset, tmp_path / "store", checkpoint_dir) == 0
    assert "1 images extracted now (1 done before)" in capsys.readouterr().out


# Shards from the environment --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_COUNT"),
        ({"SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID"),
        ({"RANK": "1"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "RANK"),
    ],
)
def test_half_set_shard_environment_is_refused(environ, missing):
    with pytest.raises(InvalidInputError, match=f"{missing} is not.*--shard I/N"):
        parse_shard(None, environ)


def test_garbage_in_the_shard_environment_is_refused():
    with pytest.raises(InvalidInputError, match="RANK must be a whole number"):
        parse_shard(None, {"RANK": "one", "WORLD_SIZE": "2"})
    assert parse_shard("1/2", {"SLURM_ARRAY_TASK_ID": "3"}) == (1, 2)  # --shard wins
