"""usam.runtime and ``usam benchmark``: both protocols, what each one times, and one precision for every variant."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from usam import runtime, sam2_adapter
from usam.devices import Precision
from usam.errors import InvalidInputError
from usam.extraction.augment import AUGMENTATIONS
from usam.heads import random_heads
from usam.predictor import UncertainSAM
from usam.runtime import VARIANTS, Protocol, Variant, measure_runtime

SMALL = [f"--hydra-override={override}" for override in sam2_adapter.small_model_overrides(128)]


class CountingModel:
    """An UncertainSAM seen through a wrapper that logs every call that reaches SAM2."""

    def __init__(self, model: UncertainSAM) -> None:
        self.model = model
        self.calls: Counter = Counter()
        self.images: list[np.ndarray] = []
        self.prompts: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def set_image(self, image):
        self.calls["set_image"] += 1
        self.images.append(image)
        return self.model.set_image(image)

    def predict_masks(self, **prompt):
        self.calls["predict_masks"] += 1
        self.prompts.append(prompt)
        return self.model.predict_masks(**prompt)

    def predict(self, **prompt):
        self.calls["predict"] += 1
        self.prompts.append(prompt)
        return self.model.predict(**prompt)


class AutocastRecordingPredictor:
    """A SAM2 image predictor wrapper that records the CPU autocast state each call of SAM2 runs in."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.states: list[tuple[str, bool, torch.dtype]] = []

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def _record(self, call: str) -> None:
        self.states.append((call, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    def set_image(self, image):
        self._record("set_image")
        return self.predictor.set_image(image)

    def predict(self, **prompt):
        self._record("predict")
        return self.predictor.predict(**prompt)


@pytest.fixture(scope="module")
def model(small_sam2):
    return UncertainSAM(sam2_adapter.make_image_predictor(small_sam2), random_heads(sam2_version="sam2.1"))


@pytest.mark.parametrize("protocol", list(Protocol))
def test_both_protocols_time_every_variant(model, rgb_image, protocol):
    measurement = measure_runtime(model, rgb_image, protocol=protocol, iterations=2, warmup=0)
    assert measurement.protocol is protocol
    assert set(measurement.seconds_per_image) == set(VARIANTS)
    assert all(seconds > 0 for seconds in measurement.seconds_per_image.values())
    assert (measurement.iterations, measurement.warmup, measurement.precision) == (2, 0, Precision.FLOAT32)
    assert measurement.statistic == ("median" if protocol is Protocol.USAM else "mean")
    record = json.loads(json.dumps(measurement.to_json()))
    assert record["protocol"] == str(protocol)
    assert set(record["seconds_per_image"]) == {"sam2", "entropy", "augmentations", "prompts", "usam"}


def test_iterations_default_to_the_protocol_s_own(model, rgb_image):
    counting = CountingModel(model)
    measurement = measure_runtime(counting, rgb_image, protocol=Protocol.PAPER, warmup=0, variants=[Variant.SAM2])
    assert measurement.iterations == 50
    assert counting.calls["set_image"] == 50


# Calls per run of each variant under the paper's protocol: SAM2 gets the image once per run (five times for the
# augmentations) and the prompt variant asks SAM2 eight times, one point each.
PAPER_CALLS_PER_RUN = {
    Variant.SAM2: {"set_image": 1, "predict_masks": 1},
    Variant.ENTROPY: {"set_image": 1, "predict_masks": 1},
    Variant.AUGMENTATIONS: {"set_image": 5, "predict_masks": 5},
    Variant.PROMPTS: {"set_image": 1, "predict_masks": 8},
    Variant.USAM: {"set_image": 1, "predict": 1},
}


@pytest.mark.parametrize("variant", list(PAPER_CALLS_PER_RUN))
def test_paper_protocol_encodes_the_image_in_every_iteration_and_asks_for_one_mask(model, rgb_image, variant):
    counting = CountingModel(model)
    measure_runtime(counting, rgb_image, protocol=Protocol.PAPER, iterations=3, warmup=1, variants=[variant])
    runs = 3 + 1
    assert dict(counting.calls) == {call: count * runs for call, count in PAPER_CALLS_PER_RUN[variant].items()}
    assert all(prompt["multimask_output"] is False for prompt in counting.prompts)
    assert all(np.asarray(prompt["point_coords"]).shape == (1, 2) for prompt in counting.prompts)


def test_usam_protocol_batches_the_eight_prompts_in_one_call(model, rgb_image):
    counting = CountingModel(model)
    measure_runtime(counting, rgb_image, protocol=Protocol.USAM, iterations=2, warmup=1, variants=[Variant.PROMPTS])
    assert dict(counting.calls) == {"set_image": 3, "predict_masks": 3}
    assert all(np.asarray(prompt["point_coords"]).shape == (8, 1, 2) for prompt in counting.prompts)
    assert all(prompt["multimask_output"] is True for prompt in counting.prompts)


def test_paper_protocol_prepares_the_augmented_images_once_outside_the_timing(model, rgb_image, monkeypatch):
    made = Counter()
    original = runtime.augmented_images

    def counting_augmented_images(*args, **kwargs):
        made["calls"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(runtime, "augmented_images", counting_augmented_images)
    for iterations in (1, 3):
        made.clear()
        counting = CountingModel(model)
        measure_runtime(
            counting, rgb_image, protocol=Protocol.PAPER, iterations=iterations, warmup=1, variants=["augmentations"]
        )
        assert made["calls"] == 1
        # Every run encodes the same five prepared images.
        assert len({id(image) for image in counting.images}) == len(AUGMENTATIONS)
        assert len(counting.images) == len(AUGMENTATIONS) * (iterations + 1)
    # usam's protocol counts making the versions as part of the method: once per run.
    made.clear()
    measure_runtime(model, rgb_image, protocol=Protocol.USAM, iterations=3, warmup=1, variants=["augmentations"])
    assert made["calls"] == 4


@pytest.mark.parametrize("precision", list(Precision))
def test_every_variant_runs_sam2_at_the_model_s_precision(small_sam2, rgb_image, precision):
    recorder = AutocastRecordingPredictor(sam2_adapter.make_image_predictor(small_sam2))
    model = UncertainSAM(recorder, random_heads(sam2_version="sam2.1"), precision=precision)
    bfloat16 = precision is Precision.BFLOAT16
    # Run inside the opposite context: a call of SAM2 that escapes the model's context would show up.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not bfloat16):
        for protocol in Protocol:
            measurement = measure_runtime(model, rgb_image, protocol=protocol, iterations=1, warmup=0)
            assert measurement.precision is precision
    calls = Counter(call for call, _, _ in recorder.states)
    assert calls["set_image"] == 2 * (1 + 1 + 5 + 1 + 1)
    assert calls["predict"] == (1 + 1 + 5 + 1 + 1) + (1 + 1 + 5 + 8 + 1)
    assert {(enabled, dtype if enabled else None) for _, enabled, dtype in recorder.states} == {
        (bfloat16, torch.bfloat16 if bfloat16 else None)
    }


def test_model_refuses_an_unknown_precision(predictor):
    with pytest.raises(InvalidInputError, match="precision must be one of 'float32', 'bfloat16'"):
        UncertainSAM(predictor, precision="float16")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"iterations": 0}, "iterations must be at least 1, got 0"),
        ({"warmup": -1}, "warmup must be at least 0, got -1"),
        ({"protocol": "fast"}, "protocol must be one of 'usam', 'paper'"),
        ({"variants": ["sam3"]}, "variant must be one of"),
    ],
)
def test_measure_runtime_refuses_bad_arguments(model, rgb_image, arguments, message):
    with pytest.raises(InvalidInputError, match=message):
        measure_runtime(model, rgb_image, **arguments)


def test_benchmark_prints_every_method_as_a_ratio(capsys):
    status, out, err = run_cli(["benchmark", "--random-weights", "--repeats", "1", *SMALL], capsys)
    assert status == 0, err
    for label in ("SAM2 alone", "+ entropy", "+ 5 image augmentations (MC)", "+ 8 prompts (MC)", "+ USAM (9 heads)"):
        assert label in out
    record = json.loads(out.strip().splitlines()[-1])
    seconds = record["seconds_per_image"]
    assert set(seconds) == {"sam2", "entropy", "augmentations", "prompts", "usam"}
    assert all(value > 0 for value in seconds.values())
    assert "1.00" in out.splitlines()[2]  # SAM2 alone is the reference


def test_benchmark_reports_both_protocols_labelled_at_the_chosen_precision(rgb_image, tmp_path, capsys):
    Image.fromarray(rgb_image).save(tmp_path / "small.png")
    status, out, err = run_cli(
        [
            "benchmark",
            "--random-weights",
            "--device",
            "cpu",
            "--image",
            tmp_path / "small.png",
            "--protocol",
            "both",
            "--precision",
            "bfloat16",
            "--iterations",
            "1",
            "--warmup",
            "0",
            *SMALL,
        ],
        capsys,
    )
    assert status == 0, err
    lines = out.strip().splitlines()
    records = [json.loads(line) for line in lines[-2:]]
    assert [(record["protocol"], record["statistic"]) for record in records] == [("usam", "median"), ("paper", "mean")]
    assert all(record["precision"] == "bfloat16" and record["iterations"] == 1 for record in records)
    assert all(set(record["seconds_per_image"]) == {str(variant) for variant in VARIANTS} for record in records)
    headers = [line for line in lines if line.startswith("sam2.1-tiny on cpu in bfloat16")]
    assert len(headers) == 2
    assert "median of 1" in headers[0]
    assert "usam protocol" in headers[0]
    assert "mean of 1" in headers[1]
    assert "paper protocol (Table 7)" in headers[1]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--iterations", "0", "usam: error: --iterations must be at least 1, got 0"),
        ("--warmup", "-1", "usam: error: --warmup must be at least 0, got -1"),
    ],
)
def test_benchmark_refuses_bad_counts_in_one_line(capsys, option, value, message):
    status, out, err = run_cli(["benchmark", "--random-weights", option, value, *SMALL], capsys)
    assert status == 2
    assert err.strip() == message
    assert out == ""
