"""``usam testbed build --quick`` and ``usam testbed run --quick`` end to end, and the bootstrap they use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from usam.evaluation.measures import MeasureKind
from usam.heads import INPUTS_OF_VARIANT, InputsVariant
from usam.metrics import CORRECTION_SCENARIOS, bootstrap_statistics, percentile_interval
from usam.testbed import TestbedSettings
from usam.testbed.numerics import cpu_has_avx2
from usam.testbed.pipeline import EXTRACTION_SHARDS, HEAD_VARIANTS, MODEL_KEYS, MODEL_NAMES, TestbedPaths


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core machine, two spinning threads make the small models many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(argv, capsys):
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err
    return out


def test_quick_build_and_run_write_stores_heads_and_a_complete_results_page(tmp_path, capsys, one_torch_thread):
    from usam.heads import load_heads
    from usam.store import StoreReader

    out = tmp_path / "bed"
    _run(["testbed", "build", "--out", out, "--quick", "--no-progress"], capsys)
    paths = TestbedPaths(out)
    for key in MODEL_KEYS:
        card = json.loads(paths.card(key).read_text())
        assert card["name"] == MODEL_NAMES[key]
        assert card["training"]["steps_done"] == TestbedSettings.quick().steps_of(key)
        # Trained in its own process, on one thread, with the arithmetic pinned where the CPU allows.
        (arithmetic,) = card["training"]["arithmetic"]
        assert arithmetic["from_step"] == 0
        assert arithmetic["threads"] == 1
        assert arithmetic["pinned"] is cpu_has_avx2()
    written = {key: paths.checkpoint(key).stat().st_mtime_ns for key in MODEL_KEYS}
    _run(["testbed", "build", "--out", out, "--quick", "--no-progress"], capsys)
    assert {key: paths.checkpoint(key).stat().st_mtime_ns for key in MODEL_KEYS} == written  # reused, not retrained

    # With the ablation's signals-only heads as a third variant (the default trains the two of HEAD_VARIANTS).
    variants = (*HEAD_VARIANTS, "signals")
    _run(["testbed", "run", "--out", out, "--quick", "--seeds", "1", "--no-progress", "--inputs", *variants], capsys)
    quick = TestbedSettings.quick()
    for split, scenes, _ in quick.splits():
        reader = StoreReader(paths.store(split))
        assert reader.models() == sorted(MODEL_NAMES.values())
        # Every scene is in exactly one of the shards, which ran in worker processes on a multi-core machine.
        manifests = reader.manifests().values()
        assert sorted(manifest.shard_index for manifest in manifests) == list(range(EXTRACTION_SHARDS))
        assert sum(manifest.completed_images for manifest in manifests) == scenes
    assert StoreReader(paths.store("test")).options["monte_carlo"] is True
    assert StoreReader(paths.store("train")).options["monte_carlo"] is False
    for inputs in variants:
        heads = load_heads(paths.heads(0, inputs))
        assert "iou_tiny" in heads.names
        assert heads.metadata.inputs == list(INPUTS_OF_VARIANT[InputsVariant(inputs)])
        assert heads.metadata.calibration is None
        # usam's recipe on the settings' schedule, not the paper's SGD.
        training = heads.metadata.training
        assert training["hyper_parameter_source"]["method"] == "given"
        schedule = training["hyper_parameter_source"]["values"]
        assert (schedule["optimizer"], schedule["epochs"], schedule["lr"]) == ("adamw", 2, 3e-3)
        # The calibrated copy holds the same weights plus a calibration fitted on the calibration split.
        calibrated = load_heads(paths.heads(0, inputs, calibrated=True))
        assert calibrated.metadata.calibration is not None

    results = json.loads((paths.results / "results.json").read_text())
    page_text = (paths.results / "results.md").read_text()
    assert page_text.startswith("# usam on the test-bed")
    assert set(results["scenarios"]) == {scenario.name for scenario in CORRECTION_SCENARIOS}
    gap = results["scenarios"]["model_selection"]
    assert (gap["base_model"], gap["corrected_model"]) == (MODEL_NAMES["tiny-early"], MODEL_NAMES["large"])
    for name, scenario in results["scenarios"].items():
        assert scenario["status"] == "done", name
        expected = {
            "sam_score",
            "random",
            "oracle",
            "h_std",
            "h_all",
            "h_theta",
            "h_task",
            "h_prompt",
            "h_augmentation",
        }
        assert expected <= set(scenario["measures"]), name
        assert any(measure["kind"] == "usam_head" for measure in scenario["measures"].values()), name
        # Both inputs variants' heads are on the page, each under its own key.
        assert {measure.get("inputs") for measure in scenario["measures"].values()} == {None, *variants}, name
        source = "model-gap" if name == "model_selection" else "main"
        for key, measure in scenario["measures"].items():
            inputs = measure.get("inputs", HEAD_VARIANTS[0])
            evaluated = json.loads((paths.evaluation(0, source, inputs) / "results.json").read_text())
            own = evaluated["scenarios"][name]["measures"][key.removesuffix(f" [{inputs}]")]
            for auc_range, entry in measure["relative_auc_percent"].items():
                # One seed: the figure is the evaluation's own number.
                assert entry["value"] == pytest.approx(own["relative_auc_percent"][auc_range])
                assert entry["lower"] <= entry["upper"], (name, key)
        oracle = scenario["measures"]["oracle"]["relative_auc_percent"]["r_0_1"]
        assert [oracle["lower"], oracle["value"], oracle["upper"]] == pytest.approx([100.0] * 3)
    for name in MODEL_NAMES.values():
        assert all(0.0 <= value <= 1.0 for value in results["miou"][name].values())
    # The click check ran per model on the test scenes (a fraction of pixels; NaN only without two clicks).
    assert set(results["prompt_dependence"]) == set(MODEL_NAMES.values())
    assert all(value is None or 0.0 <= value <= 1.0 for value in results["prompt_dependence"].values())
    assert "prompt dependence" in (paths.results / "results.md").read_text()
    assert set(results["seconds"]) == {
        "extraction", "extraction_train", "extraction_test", "extraction_calibration", "click_check", "heads",
        "calibration", "evaluation", "uses", "uses_store", "uses_clicks", "uses_automatic", "results",
    }  # fmt: skip
    assert "Time of this run" in (paths.results / "results.md").read_text()
    # Calibration: per variant and IoU head, ECE before and after and coverage for every alpha, on test rows.
    assert results["head_inputs"] == list(variants)
    assert set(results["calibration"]) == set(variants)
    for summary in results["calibration"].values():
        for head in summary["heads"].values():
            assert head["rows"] > 0
            assert head["ece_after"] is not None
            assert len(head["maps"]) == 1  # one seed: the kind of its calibration map
            assert head["maps"][0] in {"identity", "affine", "isotonic"}
            # One seed: the change is that seed's, with its bootstrap interval over the test images.
            assert head["ece_change"] == pytest.approx(head["ece_after"] - head["ece_before"])
            assert head["ece_change_interval"]["low"] <= head["ece_change_interval"]["high"]
            assert set(head["coverage"]) == {"marginal", "mondrian"}
            assert all(0.0 <= value <= 1.0 for bound in head["coverage"].values() for value in bound.values())
    assert "## Calibration" in page_text
    assert "ECE change [95 %]" in page_text
    # Pearson with every target, for the baselines and both variants' heads.
    assert set(results["correlation"]) == set(variants)
    assert "[signals]" in page_text
    assert "True task_gap" in page_text
    # Every use ran on the test-bed and wrote its own report; the page includes their tables.
    assert set(results["uses"]) == {"heads", "store", "clicks", "automatic"}
    assert results["uses"]["heads"] == paths.heads(0, "tokens+signals", calibrated=True).name
    assert {"cascade", "mask_choice", "pseudo_labels"} <= set(results["uses"]["store"])
    assert set(results["uses"]["automatic"]) == {"sam_score", "stability_score", "predicted_iou"}
    for report in ("store/uses.md", "clicks/clicks.md", "clicks/clicks.png", "automatic/automatic_ap.md"):
        assert (out / "uses" / report).is_file(), report
    page = (paths.results / "results.md").read_text()
    for heading in ("## Uses of the estimates", "Next click", "COCO mask AP"):
        assert heading in page, heading
    # Each report's own title gives way to the page's heading for it: no heading twice in a row.
    headings = [line for line in page.splitlines() if line.startswith("#")]
    assert "### Uses of usam's estimates" not in headings
    assert "### Next click: simulated user" not in headings
    assert "#### Model cascade (accuracy against the fraction escalated)" in headings
    assert all(value >= 0 for value in results["seconds"].values())

    # A later run retrains the heads: click records of other heads are stale and replaced, not resumed (nor refused).
    from usam.testbed.uses import run_testbed_uses

    records = out / "uses" / "clicks" / "clicks.records.json"
    content = json.loads(records.read_text())
    current = dict(content["identity"])
    content["identity"]["heads"] = "0" * 64
    records.write_text(json.dumps(content))
    heads_file = paths.heads(0, "tokens+signals", calibrated=True)
    run_testbed_uses(paths, quick, heads_file, progress=False)
    assert json.loads(records.read_text())["identity"] == current

    # Built with --quick: running without it is refused with one line.
    status, _, err = run_cli(["testbed", "run", "--out", out, "--no-progress"], capsys)
    assert status == 2
    assert err.startswith("usam: error:")
    assert "--quick" in err
    # Variants without the one the uses run on are refused with one line, before any work.
    status, _, err = run_cli(["testbed", "run", "--out", out, "--quick", "--inputs", "tokens", "signals"], capsys)
    assert status == 2
    assert err.strip().count("\n") == 0
    assert "must include tokens+signals" in err


def test_run_before_build_is_a_one_line_error(tmp_path, capsys):
    status, _, err = run_cli(["testbed", "run", "--out", tmp_path / "nothing", "--quick"], capsys)
    assert status == 2
    assert err.strip().count("\n") == 0
    assert "usam testbed build" in err


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    # 400 objects, half 0 and half 1: the mean's standard error is 0.5 / sqrt(400) = 0.025.
    values = np.repeat([0.0, 1.0], 200)
    samples = bootstrap_statistics(lambda index: values[index].mean(), values.size, resamples=4000, seed=1)
    low, high = percentile_interval(samples)
    assert float(low) == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006)
    assert float(high) == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)


def test_bootstrap_resamples_are_seeded_and_shared_by_statistics():
    values = np.arange(10.0)
    first = bootstrap_statistics(lambda index: values[index].sum(), 10, resamples=50, seed=3)
    again = bootstrap_statistics(lambda index: values[index].sum(), 10, resamples=50, seed=3)
    doubled = bootstrap_statistics(lambda index: 2 * values[index].sum(), 10, resamples=50, seed=3)
    assert np.array_equal(first, again)
    assert np.array_equal(doubled, 2 * first)
    assert not np.array_equal(first, bootstrap_statistics(lambda index: values[index].sum(), 10, resamples=50, seed=4))


def test_percentile_interval_of_a_constant_and_of_undefined_values():
    low, high = percentile_interval(np.array([[3.0, np.nan], [3.0, np.nan]]))
    assert low[0] == high[0] == 3.0
    assert np.isnan(low[1])
    assert np.isnan(high[1])


def test_baselines_equal_in_every_seed_are_bootstrapped_once(monkeypatch):
    """Heads change per seed, the store's baselines do not: only seed 0 resamples a baseline that all seeds share."""
    import types

    from usam.testbed import pipeline

    head, sam, moved = str(MeasureKind.USAM_HEAD), "sam_score", "baseline that differs"
    point = {"sam": 60.0, "moved": [50.0, 51.0, 52.0], "head": [70.0, 72.0, 74.0]}

    def evaluation(seed):
        measures = {
            "head": types.SimpleNamespace(label="head", kind=head, relative_auc_percent={"0-1": point["head"][seed]}),
            "sam": types.SimpleNamespace(label="sam", kind=sam, relative_auc_percent={"0-1": point["sam"]}),
            "moved": types.SimpleNamespace(label=moved, kind=sam, relative_auc_percent={"0-1": point["moved"][seed]}),
        }
        result = types.SimpleNamespace(
            status="done", title="t", base_model="a", corrected_model="b", num_objects=40, measures=measures
        )
        return types.SimpleNamespace(seed=seed, scenarios={"s": result})

    asked: list[tuple[int, list[str]]] = []

    def statistics(scenario, evaluation, result, keys, settings):
        asked.append((evaluation.seed, list(keys)))
        # A statistic that depends on the resample and on the seed, so that copies are not trivially equal; one row
        # per key, one column per range.
        return (lambda index, s=evaluation.seed: np.full((len(keys), 1), index.mean() + s)), 40

    monkeypatch.setattr(pipeline, "_statistics", statistics)
    settings = TestbedSettings.quick()
    summary = pipeline._scenario_summary(types.SimpleNamespace(name="s"), [evaluation(k) for k in range(3)], settings)
    assert asked == [(0, ["head", "sam", "moved"]), (1, ["head", "moved"]), (2, ["head", "moved"])]
    one_seed = bootstrap_statistics(
        lambda index: np.array([index.mean()]), 40, resamples=settings.bootstrap_resamples, seed=0
    )
    low, high = percentile_interval(one_seed)
    shared = summary["measures"]["sam"]["relative_auc_percent"]["0-1"]
    assert (shared["lower"], shared["upper"]) == pytest.approx((low[0], high[0]))
    # Measures that differ between seeds pool every seed's samples: their interval is wider than one seed's.
    pooled = summary["measures"]["moved"]["relative_auc_percent"]["0-1"]
    assert pooled["upper"] - pooled["lower"] > high[0] - low[0]
    assert summary["measures"]["head"]["relative_auc_percent"]["0-1"]["value"] == pytest.approx(72.0)


def test_uses_beside_heads_leave_a_core_while_running_and_give_it_back(tmp_path):
    """While the uses' process runs, the heads keep all cores but one; once it is done, and after, all again."""
    import torch

    from usam.testbed.pipeline import TestbedPaths, _UsesBesideHeads

    class Job:
        done = False

        def ready(self):
            return self.done

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _UsesBesideHeads(TestbedPaths(tmp_path), TestbedSettings.quick(), tmp_path / "h", "cpu") as uses:
            uses.share_cores()
            assert torch.get_num_threads() == 2  # nothing started yet
            uses.future = job = Job()
            uses.share_cores()
            assert torch.get_num_threads() == 1
            job.done = True
            uses.share_cores()
            assert torch.get_num_threads() == 2
            job.done = False
            uses.share_cores()
        assert torch.get_num_threads() == 2  # leaving the block gives every thread back
    finally:
        torch.set_num_threads(threads)


def test_build_stops_with_one_line_when_a_scene_folder_holds_another_dataset(tmp_path, capsys):
    out = tmp_path / "bed"
    other = out / "scenes" / "test"
    other.mkdir(parents=True)
    manifest = {"generator": "usam.testbed.scenes", "version": 1, "seed": 99, "size": 128, "num_scenes": 4}
    (other / "scenes.json").write_text(json.dumps(manifest))
    status, _, err = run_cli(["testbed", "build", "--out", out, "--quick", "--no-progress"], capsys)
    assert status == 2
    assert err.startswith("usam: error:")
    assert len(err.strip().splitlines()) == 1
    assert str(other) in err
    assert json.loads((other / "scenes.json").read_text()) == manifest  # nothing of the other dataset is touched


def test_calibration_summary_pools_the_seeds_bootstrap_samples_of_the_ece_change():
    from usam.metrics import percentile_interval
    from usam.testbed.pipeline import _calibration_lines, summarize_calibration

    def seed_check(before, after, samples):
        head = {"rows": 10, "ece_before": before, "ece_after": after,
                "coverage": {"marginal": {"0.1": 0.9}, "mondrian": {"0.1": 0.9}}}  # fmt: skip
        return {"tokens": {"alphas": [0.1], "guarantee": "marginal", "heads": {"iou_tiny": head},
                           "maps": {"iou_tiny": "affine"}, "ece_change_samples": {"iou_tiny": samples}}}  # fmt: skip

    rng = np.random.default_rng(0)
    first, second = rng.normal(0.002, 0.001, 300), rng.normal(-0.004, 0.001, 300)
    summary = summarize_calibration([seed_check(0.010, 0.012, first), seed_check(0.012, 0.008, second)])
    head = summary["tokens"]["heads"]["iou_tiny"]
    assert head["ece_change"] == pytest.approx(-0.001)  # mean over seeds of after - before
    low, high = percentile_interval(np.concatenate([first, second]))
    assert head["ece_change_interval"] == pytest.approx({"low": float(low), "high": float(high)})
    # Pooled: wider than either seed's own interval.
    assert low < -0.004
    assert high > 0.002
    assert head["maps"] == ["affine", "affine"]
    page = "\n".join(_calibration_lines(summary))
    assert f"-0.0010 [{low:+.4f}, {high:+.4f}]" in page
    assert "Over all 1 IoU heads (mean over seeds): the ECE fell for 1, rose for 0 and stayed for 0" in page
    assert "entirely below 0 for 0 and entirely above 0 (a rise beyond the noise) for 0." in page
    # A head whose every resample rose: counted above 0.
    risen = summarize_calibration([seed_check(0.010, 0.014, rng.normal(0.004, 0.0005, 300))])
    assert "rose for 1" in "\n".join(_calibration_lines(risen))
    assert "(a rise beyond the noise) for 1." in "\n".join(_calibration_lines(risen))


def test_a_folder_built_with_other_run_budgets_runs_with_the_new_ones_but_other_scenes_are_refused(tmp_path):
    import dataclasses

    from usam.errors import InvalidInputError
    from usam.testbed.pipeline import RUN_SETTINGS, check_built_with

    fields = {field.name for field in dataclasses.fields(TestbedSettings)}
    assert RUN_SETTINGS.issubset(fields)
    assert fields - RUN_SETTINGS  # the scenes and models are not run-only
    assert set(TestbedSettings().built_part()) == fields - RUN_SETTINGS
    paths = TestbedPaths(tmp_path)
    built = TestbedSettings.quick()
    # The heads' schedule, the bootstrap and the uses are redone by every run: other values are not a rebuild.
    check_built_with(paths, built, dataclasses.replace(built, head_epochs=5, bootstrap_resamples=7), "remedy")
    check_built_with(paths, None, built, "remedy")  # nothing built yet
    other = dataclasses.replace(built, train_scenes=built.train_scenes + 1, head_epochs=5)
    with pytest.raises(InvalidInputError, match="remedy") as caught:
        check_built_with(paths, built, other, "remedy")
    message = str(caught.value)
    assert f"train_scenes {built.train_scenes} there, {built.train_scenes + 1} now" in message
    assert "head_epochs" not in message
    assert str(tmp_path) in message


def test_run_goes_on_in_a_folder_built_with_another_head_schedule(tmp_path, monkeypatch):
    import dataclasses

    from usam.errors import InvalidInputError
    from usam.testbed import pipeline, run_testbed

    quick = TestbedSettings.quick()
    paths = TestbedPaths(tmp_path / "bed")
    paths.card(MODEL_KEYS[0]).parent.mkdir(parents=True)
    for key in MODEL_KEYS:
        paths.card(key).write_text("{}")

    def record(settings):
        paths.settings.write_text(json.dumps({"settings": dataclasses.asdict(settings)}))

    class ExtractionStartedError(Exception):
        pass

    def extract_splits(*args, **kwargs):
        raise ExtractionStartedError

    monkeypatch.setattr(pipeline, "extract_splits", extract_splits)
    record(dataclasses.replace(quick, head_epochs=quick.head_epochs + 3, use_scenes=quick.use_scenes + 1))
    with pytest.raises(ExtractionStartedError):  # past the settings check, on to the extraction
        run_testbed(paths.root, quick, seeds=1, progress=False)
    record(dataclasses.replace(quick, test_scenes=quick.test_scenes + 1))
    with pytest.raises(InvalidInputError, match="test_scenes"):
        run_testbed(paths.root, quick, seeds=1, progress=False)


def test_extraction_queues_every_shard_of_every_split_in_order_and_times_each_split(tmp_path, monkeypatch):
    from usam.testbed import pipeline

    calls = []

    def extract_shard(root, split, monte_carlo, seed, shard, device, progress):
        calls.append((split, monte_carlo, shard))

    monkeypatch.setattr(pipeline, "_extract_shard", extract_shard)
    splits = (("train", False), ("test", True), ("calibration", False))
    seconds = pipeline.extract_splits(TestbedPaths(tmp_path), splits, TestbedSettings.quick(), progress=False)
    assert calls == [
        (split, monte_carlo, (index, EXTRACTION_SHARDS)) for split, monte_carlo in splits
        for index in range(EXTRACTION_SHARDS)
    ]  # fmt: skip
    assert list(seconds) == ["train", "test", "calibration"]
    assert all(value >= 0 for value in seconds.values())
