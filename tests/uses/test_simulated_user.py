import numpy as np
import pytest

from conftest import build_small_sam2, write_folder_dataset
from usam import sam2_adapter
from usam.datasets import open_dataset
from usam.errors import InvalidInputError, UsamError
from usam.heads import random_heads
from usam.predictor import UncertainSAM
from usam.uses.simulated_user import (
    SimulationOptions,
    ask_when_needed,
    number_of_clicks,
    run_click_simulation,
    summarize_runs,
)


def test_number_of_clicks_counts_the_first_click_that_reaches_the_target():
    ious = np.array(
        [
            [0.50, 0.84, 0.85, 0.95],  # reaches 0.85 at click 3 exactly, 0.90 at click 4
            [0.91, 0.10, 0.20, 0.30],  # reached at once; later drops do not count
            [0.10, 0.20, 0.30, 0.40],  # never: counted as the maximum (4)
        ]
    )
    assert number_of_clicks(ious, 0.85).tolist() == [3, 1, 4]
    assert number_of_clicks(ious, 0.90).tolist() == [4, 1, 4]
    with pytest.raises(InvalidInputError):
        number_of_clicks(ious, 0.0)


def test_ask_when_needed_stops_an_object_at_its_first_low_prompt_gap():
    ious = np.array([[0.2, 0.5, 0.9], [0.7, 0.75, 0.8]])
    gaps = np.array([[0.3, 0.1, 0.0], [0.05, 0.3, 0.3]])
    points = ask_when_needed(ious, gaps, [-0.5, 0.04, 0.2, 0.5], max_clicks=3)
    # tau -0.5: everyone gets 3 clicks; 0.04: object 0 gets 3, object 1 gets 3; 0.2: object 0 stops after
    # click 2 (gap 0.1), object 1 after click 1; 0.5: nobody is asked.
    assert [point["clicks_asked"] for point in points] == [2.0, 2.0, 0.5, 0.0]
    assert [point["miou"] for point in points] == pytest.approx([0.85, 0.85, 0.6, 0.45])
    assert [point["asked_share"] for point in points] == [1.0, 1.0, 0.5, 0.0]
    with pytest.raises(InvalidInputError, match="threshold"):
        ask_when_needed(ious, gaps, [0.6], max_clicks=3)


@pytest.fixture(scope="module")
def model():
    return UncertainSAM(
        sam2_adapter.make_image_predictor(build_small_sam2()), random_heads(seed=1, sam2_version="sam2.1")
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("clicks") / "data", num_images=2, size=(48, 64))


def test_the_loop_is_deterministic_and_follows_the_truth(model, dataset):
    options = SimulationOptions(max_clicks=3, seed=3)
    reader = open_dataset("folder", dataset, "all")
    runs = run_click_simulation(model, reader, options, progress=False)
    again = run_click_simulation(model, open_dataset("folder", dataset, "all"), options, progress=False)
    assert [run.as_record() for run in runs] == [run.as_record() for run in again]
    assert len(runs) == 2 * 2 * len(options.strategies)  # images x objects x strategies
    truths = {(sample.image_key, key): mask for sample in reader for key, mask in sample.masks.items()}
    for run in runs:
        assert len(run.ious) == len(run.prompt_gaps) == 3
        assert all(0.0 <= value <= 1.0 for value in run.ious)
        truth = truths[(run.image_key, run.object_id)]
        for x, y, label in run.clicks:
            assert 0 <= x < 64
            assert 0 <= y < 48
            assert label == int(truth[y, x])  # the simulated user labels from the truth
        assert run.clicks[0][2] == 1  # the centre click is inside the object
    first = {(run.image_key, run.object_id): run.ious[0] for run in runs}
    assert all(run.ious[0] == first[(run.image_key, run.object_id)] for run in runs)  # one shared first click
    only_random = SimulationOptions(max_clicks=3, seed=4, strategies=("random",))
    other_seed = run_click_simulation(model, reader, only_random, progress=False)
    random_clicks = [[run.clicks for run in result if run.strategy == "random"] for result in (runs, other_seed)]
    assert random_clicks[0] != random_clicks[1]


def test_summary_and_resume(model, dataset, tmp_path):
    options = SimulationOptions(max_clicks=3, strategies=("error-region", "uncertain-region"), mask_choice="sam")
    records = tmp_path / "records.json"
    runs = run_click_simulation(
        model, open_dataset("folder", dataset, "all"), options, records_path=records, progress=False
    )
    assert records.exists()
    resumed = run_click_simulation(
        model, open_dataset("folder", dataset, "all"), options, records_path=records, progress=False
    )
    assert [run.as_record() for run in resumed] == [run.as_record() for run in runs]
    with pytest.raises(UsamError, match="other options"):
        run_click_simulation(
            model, open_dataset("folder", dataset, "all"), SimulationOptions(max_clicks=2), records_path=records
        )
    # Other heads (or another model) give other runs: resuming their records is refused, not mixed in.
    other_heads = UncertainSAM(model.predictor, random_heads(seed=2, sam2_version="sam2.1"))
    with pytest.raises(UsamError, match="another model or other heads"):
        run_click_simulation(other_heads, open_dataset("folder", dataset, "all"), options, records_path=records)
    summary = summarize_runs(runs, gate_clicks=2, resamples=50)
    assert set(summary) == {"error-region", "uncertain-region"}
    for result in summary.values():
        assert result["objects"] == 4
        for entry in result["noc"].values():
            assert 1.0 <= entry["mean"] <= 3.0
            assert entry["interval"][0] <= entry["mean"] <= entry["interval"][1]
        assert list(result["miou"]) == ["1", "2", "3"]
        assert len(result["miou_curve"]) == 3
    with pytest.raises(InvalidInputError, match="no objects"):
        summarize_runs([])


def test_options_are_checked():
    with pytest.raises(InvalidInputError, match="max clicks"):
        SimulationOptions(max_clicks=0)
    with pytest.raises(InvalidInputError, match="strategy"):
        SimulationOptions(strategies=("everywhere",))
    with pytest.raises(InvalidInputError, match="distinct"):
        SimulationOptions(strategies=("random", "random"))


def test_an_image_with_a_single_object_runs_every_round(model):
    """One object is one prompt per call, whose axis SAM2 drops; the loop must still index its prompts."""
    from usam.datasets.base import Sample

    rng = np.random.default_rng(7)
    image = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    truth = np.zeros((48, 64), dtype=bool)
    truth[10:30, 15:45] = True
    sample = Sample(image_key="single", image=image, masks={"only": truth}, dataset="folder", split="all")
    runs = run_click_simulation(model, [sample], SimulationOptions(max_clicks=3, seed=0), progress=False)
    assert len(runs) == len(SimulationOptions().strategies)
    assert all(len(run.ious) == 3 and run.clicks[0][2] == 1 for run in runs)
