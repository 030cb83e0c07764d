"""The test-bed end to end: scenes and models (``usam testbed build``), then usam's pipeline (``usam testbed run``).

Folder layout under ``DIR``::

    testbed.json            the settings the folder was built with (``build`` and ``run`` refuse other values of
                            what they made, :meth:`TestbedSettings.built_part`; the run's own budgets may change)
    scenes/train, scenes/test   scene datasets in usam's ``folder`` layout (distinct seeds)
    models/<key>.pt, .json  SAM2 checkpoints and their model cards (keys ``tiny``, ``tiny-early``, ``large``)
    stores/train, stores/test   token stores (the training split without, the test split with Monte Carlo)
    heads/seed-<k>-<inputs>[-calibrated].safetensors  heads trained per seed and inputs (usam's recipe on
                            the settings' schedule), and their copies calibrated on the calibration split
    evaluation/seed-<k>/{main,model-gap}/   ``usam evaluate``'s reports per seed
    results/results.md, results.json        the combined results page

The models and the model gap: ``tiny`` is trained with the full budget, ``large`` likewise, and ``tiny-early`` is
its own, shorter run (about half the steps) whose learning rate anneals within its shorter schedule, so it is a
finished model of a smaller budget rather than a snapshot taken at a high learning rate. All three keep the click map
(their cards record it; usam adds it to every prompt). Stores,
heads and the evaluation pair models for the model gap by family (the card name before ``-<size>``,
:func:`usam.models.size_and_family`), and the model gap's tiny is the under-trained one, so the cards are named by
the role they play: ``tiny-early`` is ``testbed-tiny`` (family ``testbed``, paired with ``testbed-large``) and the
fully trained ``tiny`` is ``testbed_full-tiny`` (a family of its own). One store holds the rows of all three; the
``iou_tiny`` head trains on both tiny models' rows. Each seed is evaluated twice: the model under evaluation is the
fully trained tiny for prompt refinement, task supervision and segmentation uncertainty, and ``testbed-tiny`` for
model selection (``testbed-tiny`` -> ``testbed-large``).

Seeds change the heads' initialisation, shuffling and validation split (:func:`usam.training.train_from_store`);
the models, scenes and stores are made once. Each figure of the results page is the mean over seeds of the
evaluation's own number; its 95 % interval pools the bootstrap over test objects of every seed: each seed's
statistic is recomputed on the same resamples of the objects (:func:`usam.metrics.bootstrap_statistics`), the
samples of all seeds are put together, and their 2.5 and 97.5 percentiles are the bounds, so the interval covers
both the variation between test objects and between seeds (a baseline that is the same in every seed is
bootstrapped once, see :func:`_scenario_summary`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.errors import InvalidInputError
from usam.evaluation.measures import MeasureKind
from usam.evaluation.report import format_ece_change
from usam.evaluation.scenarios import RANGE_LABELS
from usam.files import write_json_atomically, write_text_atomically
from usam.metrics import (
    CORRECTION_SCENARIOS,
    DEFAULT_BOOTSTRAP_RESAMPLES,
    bootstrap_statistics,
    no_correction_curve,
    oracle_curve,
    percentile_interval,
    random_curve,
)
from usam.validation import check_choice, check_float, check_int

SETTINGS_FILE = "testbed.json"
MODEL_KEYS: tuple[str, ...] = ("tiny", "tiny-early", "large")
MODEL_NAMES: dict[str, str] = {"tiny": "testbed_full-tiny", "tiny-early": "testbed-tiny", "large": "testbed-large"}
"""The card name of each model: the model gap pairs ``tiny-early`` with ``large`` (one family, ``testbed``)."""
MAIN_EVALUATION, GAP_EVALUATION = "main", "model-gap"
SCENARIO_SOURCE: dict[str, str] = {
    "model_selection": GAP_EVALUATION,
    "prompt_refinement": MAIN_EVALUATION,
    "task_supervision": MAIN_EVALUATION,
    "segmentation_uncertainty": MAIN_EVALUATION,
}
"""Which of a seed's two evaluations gives each scenario."""
MIOU_COLUMNS: dict[str, str] = {
    "best_of_three": "iou",
    "sam_pick": "unsupervised_iou",
    "dense_prompt": "iou_dense_prompt",
}
"""Store column of each mIoU the results page reports per model."""
HEAD_VARIANTS: tuple[str, ...] = ("tokens", "tokens+signals")
"""Inputs of the heads trained per seed (:class:`usam.heads.InputsVariant`): the paper's tokens, and the tokens with
SAM2's scalar signals."""
HEAD_MEASURE_KINDS: tuple[str, ...] = (str(MeasureKind.USAM_HEAD), str(MeasureKind.USAM_HEAD_DIFFERENCE))
"""Measure kinds that depend on the heads, so on their inputs."""
USES_HEAD_INPUTS = "tokens+signals"
"""The uses run on seed 0's calibrated heads of these inputs."""
RESULTS_FOLDER = "results"
RUN_SETTINGS = frozenset(
    {"bootstrap_resamples", "random_orders", "dependence_scenes", "use_scenes", "head_epochs", "head_learning_rate"}
)
"""Settings that only ``run`` reads and that nothing it reuses depends on (it retrains the heads and recomputes the
evaluation, the click check and the uses every time): a folder built with other values of these is run with the values
asked for now instead of being refused, so a new default schedule does not cost a rebuild."""

EXTRACTION_SHARDS = 2
"""Shards of each test-bed store. A store keeps its shard count, so it is fixed rather than the machine's core count;
:func:`extraction_workers` decides how many run at once."""


@dataclasses.dataclass(frozen=True)
class TestbedSettings:
    """Sizes and budgets of the test-bed; the defaults are the issue's figures.

    Attributes:
        train_scenes: Scenes of the training split (about 3.2 targets each).
        test_scenes: Scenes of the held-out test split.
        train_seed: Seed of the training split's scenes.
        test_seed: Seed of the test split's scenes (distinct from the training split's).
        image_size: Side of the scenes and of the models' input.
        tiny_steps: Training steps of the fully trained tiny model.
        tiny_early_steps: Training steps of the under-trained tiny (its own, shorter schedule).
        large_steps: Training steps of the large model.
        model_seed: Seed of the models' initial weights and training scenes.
        scenes_per_step: Fresh scenes per training step.
        prompts_per_scene: Prompts per scene and training step.
        extraction_seed: Seed of the extraction's prompts and image noise.
        bootstrap_resamples: Bootstrap resamples of the test objects per seed.
        random_orders: Random orders averaged for the random baseline.
        dependence_scenes: Test scenes of the click check (:func:`usam.testbed.prompt_dependence`) per model.
        use_scenes: Test scenes of the uses that run the model (next click, automatic masks; :mod:`.uses`).
        calibration_scenes: Scenes of the calibration split (no Monte Carlo), on which every heads file's IoU heads
            are calibrated before their calibration is checked on the test split.
        calibration_seed: Seed of the calibration split's scenes.
        head_epochs: Epochs of usam's recipe (AdamW, one warm-up epoch, cosine decay, early stopping) for the
            heads: :data:`usam.training.USAM_HYPER_PARAMETERS` on this shorter schedule.
        head_learning_rate: Its peak learning rate. On the test-bed's training store, 20 epochs at 3e-3 reach
            within 3 % of the validation MSE of the recipe's 40 epochs at 1e-3 (within 6 % on the task gap) in
            half the time, and every head ends far below the paper's recipe (task gap 0.011 vs 0.018). 12 epochs
            (the default) instead of 20 take 40 % less time per heads file (62-74 s against 105-122 s on two
            cores) and move the best head's relative AUC in each scenario by at most 0.5 points (pinned build,
            mean of seeds 0-2, tokens+signals / tokens: model selection 60.6 -> 60.6 / 54.8 -> 54.7, prompt
            refinement 77.1 -> 77.0 / 69.5 -> 69.5, task supervision 95.0 -> 94.7 / 91.4 -> 91.0, segmentation
            uncertainty 93.6 -> 93.6 / 89.8 -> 89.5), inside the 95 % intervals; that saves the run about 4
            minutes.
    """

    __test__ = False  # not a pytest test class despite its name

    train_scenes: int = 8000
    test_scenes: int = 1000
    train_seed: int = 1
    test_seed: int = 2
    image_size: int = 128
    tiny_steps: int = 850
    tiny_early_steps: int = 425
    large_steps: int = 1600
    model_seed: int = 0
    scenes_per_step: int = 8
    prompts_per_scene: int = 8
    extraction_seed: int = 0
    bootstrap_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES
    random_orders: int = 10
    dependence_scenes: int = 200
    use_scenes: int = 100
    calibration_scenes: int = 1000
    calibration_seed: int = 3
    head_epochs: int = 12
    head_learning_rate: float = 3e-3

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            label = field.name.replace("_", " ")
            if field.type == "float":
                check_float(getattr(self, field.name), label, minimum=0, exclusive_minimum=True)
                continue
            check_int(getattr(self, field.name), label, minimum=0 if field.name.endswith("_seed") else 1)
        if self.head_epochs < 2:
            raise InvalidInputError(f"head epochs must be at least 2 (one is the warm-up), got {self.head_epochs}")
        if len({self.train_seed, self.test_seed, self.calibration_seed}) < 3:
            raise InvalidInputError("the training, test and calibration splits need distinct scene seeds")

    @classmethod
    def quick(cls) -> TestbedSettings:
        """A smoke run: a few scenes, a few training steps per model, few resamples (seconds on a CPU)."""
        return cls(
            train_scenes=6, test_scenes=4, tiny_steps=2, tiny_early_steps=1, large_steps=2, scenes_per_step=1,
            prompts_per_scene=2, bootstrap_resamples=50, random_orders=2, dependence_scenes=4, use_scenes=2,
            calibration_scenes=16,  # enough rows per IoU head to fit a calibration (20 + 20)
            head_epochs=2,
        )  # fmt: skip

    def built_part(self) -> dict[str, Any]:
        """The settings that decide what a folder holds (scenes, models, stores): all but :data:`RUN_SETTINGS`."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key not in RUN_SETTINGS}

    def splits(self) -> tuple[tuple[str, int, int], ...]:
        """``(split, scenes, seed)`` of every scene split."""
        return (
            ("train", self.train_scenes, self.train_seed),
            ("test", self.test_scenes, self.test_seed),
            ("calibration", self.calibration_scenes, self.calibration_seed),
        )

    def steps_of(self, key: str) -> int:
        """Training steps of model ``key`` (one of :data:`MODEL_KEYS`)."""
        return {"tiny": self.tiny_steps, "tiny-early": self.tiny_early_steps, "large": self.large_steps}[key]

    def training_config(self, key: str) -> Any:
        """The :class:`usam.testbed.model_training.TrainingConfig` of model ``key``."""
        from usam.testbed.model_training import TrainingConfig

        return TrainingConfig(
            size="large" if key == "large" else "tiny",
            steps=self.steps_of(key),
            seed=self.model_seed,
            image_size=self.image_size,
            scenes_per_step=self.scenes_per_step,
            prompts_per_scene=self.prompts_per_scene,
            checkpoint_every=min(100, self.steps_of(key)),
            # Annealing the click map away left models that ignore clicks (see the README): keep it throughout;
            # the card then records it and usam adds it to every prompt.
            click_map_full_until=1.0,
            click_map_off_from=1.0,
        )


@dataclasses.dataclass(frozen=True)
class TestbedPaths:
    """Where everything of a test-bed folder lives (see the module docstring)."""

    __test__ = False  # not a pytest test class despite its name

    root: Path

    @property
    def settings(self) -> Path:
        """The settings file."""
        return self.root / SETTINGS_FILE

    def scenes(self, split: str) -> Path:
        """Scene dataset of ``train`` or ``test``."""
        return self.root / "scenes" / split

    def checkpoint(self, key: str) -> Path:
        """Checkpoint of model ``key``."""
        return self.root / "models" / f"{key}.pt"

    def card(self, key: str) -> Path:
        """Model card of model ``key``."""
        from usam.testbed.model_training import model_card_path

        return model_card_path(self.checkpoint(key))

    def store(self, split: str) -> Path:
        """Token store of ``train`` or ``test``."""
        return self.root / "stores" / split

    def heads(self, seed: int, inputs: str = HEAD_VARIANTS[0], *, calibrated: bool = False) -> Path:
        """Heads of one inputs variant trained with ``seed`` (their calibrated copy if ``calibrated``)."""
        stem = f"seed-{seed}-{str(inputs).replace('+', '-')}" + ("-calibrated" * calibrated)
        return self.root / "heads" / f"{stem}.safetensors"

    def evaluation(self, seed: int, which: str, inputs: str = HEAD_VARIANTS[0]) -> Path:
        """Report folder of one of a seed's evaluations of one inputs variant."""
        return self.root / "evaluation" / f"seed-{seed}" / str(inputs).replace("+", "-") / which

    @property
    def results(self) -> Path:
        """Folder of the results page."""
        return self.root / RESULTS_FOLDER


def build_testbed(out: str | Path, settings: TestbedSettings | None = None, *, progress: bool = True) -> TestbedPaths:
    """Write the scene datasets and train the three models, reusing what a run with the same settings left.

    Scenes resume (:func:`usam.testbed.scenes.write_scene_dataset`); a model whose checkpoint and card exist with
    the same settings is reused, an interrupted one resumes (:func:`usam.testbed.model_training.train_testbed_model`).
    Both happen side by side in processes, the models with pinned arithmetic (:func:`make_models_and_scenes`).

    Raises:
        InvalidInputError: ``out`` was built with other settings.
        UsamError: A model or scene folder there holds something else.
    """
    settings = settings or TestbedSettings()
    paths = TestbedPaths(Path(out).expanduser())
    check_built_with(paths, recorded_settings(paths), settings, "use another --out folder, or the same --quick choice")
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json_atomically({"settings": dataclasses.asdict(settings)}, paths.settings)
    make_models_and_scenes(paths, settings, progress=progress)
    return paths


def make_models_and_scenes(paths: TestbedPaths, settings: TestbedSettings, *, progress: bool = True) -> None:
    """Train (or reuse, or resume) the three models and write the scene splits, in spawned worker processes.

    Each model trains on one thread with the arithmetic of :mod:`usam.testbed.numerics`, so it ends with the same
    bits on any x86-64 CPU with AVX2 and any number of cores. Up to one process per core runs at a time: the models
    first, the longest run first, then the scenes (which need no pin), so on two cores ``large`` trains beside
    ``tiny``, ``tiny-early`` and the scenes. Progress comes back through a queue to one bar per job here.

    Raises:
        UsamError: What a job raised; the other jobs are stopped then (models resume from their last checkpoint,
            scenes from the last complete scene).
    """
    import multiprocessing
    import os
    import queue as queue_module

    from tqdm.auto import tqdm

    from usam.testbed.numerics import pinned_environment, spawn_environment

    jobs = [(f"training {key}", "model", key, settings.steps_of(key)) for key in
            sorted(MODEL_KEYS, key=settings.steps_of, reverse=True)]  # fmt: skip
    jobs += [(f"writing {split} scenes", "scenes", split, count) for split, count, _ in settings.splits()]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    context = multiprocessing.get_context("spawn")  # the pin is read when a process starts
    progress_queue = context.Queue()
    bars = {
        name: tqdm(total=total, desc=name, unit="step" if kind == "model" else "scene", position=index,
                   disable=not progress)
        for index, (name, kind, _, total) in enumerate(jobs)
    }  # fmt: skip
    try:
        # Pool, not ProcessPoolExecutor: leaving the block on an error terminates the other jobs at once.
        with (
            spawn_environment(pinned_environment()),
            context.Pool(workers, initializer=_set_progress_queue, initargs=(progress_queue,)) as pool,
        ):
            running = {
                pool.apply_async(_build_job, (str(paths.root), name, kind, key, settings)): name
                for name, kind, key, _ in jobs
            }
            while running:
                news: list[tuple[str, int]] = []
                with contextlib.suppress(queue_module.Empty):
                    # Wait a little for news, then take what has come (the jobs send slower than this drains).
                    news = [progress_queue.get(timeout=0.5)]
                    while True:
                        news.append(progress_queue.get_nowait())
                for name, done in news:
                    bars[name].update(max(done - bars[name].n, 0))  # news can come after the result
                for result in [result for result in running if result.ready()]:
                    result.get()  # raises what the job raised
                    bar = bars[running.pop(result)]
                    bar.update(bar.total - bar.n)  # a reused model or split reports nothing
    finally:
        for bar in bars.values():
            bar.close()


_PROGRESS_QUEUE: Any = None


def _set_progress_queue(progress_queue: Any) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue


def _build_job(root: str, name: str, kind: str, key: str, settings: TestbedSettings) -> None:
    """Train one model or write one scene split (run in a spawned worker process with the pinned arithmetic)."""
    import torch

    from usam.testbed.model_training import train_testbed_model
    from usam.testbed.numerics import arithmetic_record
    from usam.testbed.scenes import write_scene_dataset

    torch.set_num_threads(1)

    def report(done: int) -> None:
        if _PROGRESS_QUEUE is not None:
            _PROGRESS_QUEUE.put((name, done))

    paths = TestbedPaths(Path(root))
    if kind == "scenes":
        count, seed = {split: (count, seed) for split, count, seed in settings.splits()}[key]
        write_scene_dataset(paths.scenes(key), count, seed, settings.image_size, on_scene=report)
        return
    train_testbed_model(
        paths.checkpoint(key),
        settings.training_config(key),
        progress=False,
        name=MODEL_NAMES[key],
        log_every=max(1, min(50, settings.steps_of(key))),
        on_step=report,
        arithmetic=arithmetic_record(),
    )


def run_testbed(
    out: str | Path,
    settings: TestbedSettings | None = None,
    *,
    seeds: int = 3,
    progress: bool = True,
    device: str | None = None,
    inputs: Sequence[str] = HEAD_VARIANTS,
) -> dict[str, Any]:
    """Extract, train heads per seed, evaluate per seed and write ``results/results.md`` and ``results.json``.

    Extraction resumes into existing stores; heads and evaluations are redone.

    Args:
        out: A folder made by :func:`build_testbed` with the same settings.
        settings: The settings it was built with (default: the issue's).
        seeds: Seeds of the heads (0 to seeds - 1).
        progress: Show progress bars.
        device: Torch device of extraction and head training (default: CUDA when available, else the CPU).
        inputs: Inputs variants (:class:`usam.heads.InputsVariant`) of the heads trained per seed, each with its
            own rows on the page (add ``"signals"`` for the ablation); must include :data:`USES_HEAD_INPUTS`.

    Returns:
        The content of ``results.json``.

    Raises:
        InvalidInputError: ``out`` was not built, or with other settings; or ``inputs`` names an unknown variant or
            lacks :data:`USES_HEAD_INPUTS`.
    """
    from usam.devices import Precision, has_fast_bfloat16, select_device
    from usam.extraction import build_models
    from usam.heads import INPUTS_OF_VARIANT, InputsVariant
    from usam.training import USAM_HYPER_PARAMETERS, train_from_store

    settings = settings or TestbedSettings()
    seeds = check_int(seeds, "seeds", minimum=1)
    variants = _head_variants(inputs)
    paths = TestbedPaths(Path(out).expanduser())
    recorded = recorded_settings(paths)
    missing = [key for key in MODEL_KEYS if not paths.card(key).exists()]
    if recorded is None or missing:
        raise InvalidInputError(f"{paths.root} holds no built test-bed; run 'usam testbed build --out {out}' first")
    check_built_with(paths, recorded, settings, "pass the same --quick choice as to 'usam testbed build'")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    splits = (("train", False), ("test", True), ("calibration", False))
    split_seconds = extract_splits(
        paths, splits, settings, device=device, workers=extraction_workers(device), progress=progress
    )
    seconds.update({f"extraction_{split}": value for split, value in split_seconds.items()})
    seconds["extraction"] = time.perf_counter() - started
    started = time.perf_counter()
    models = build_models([paths.card(key) for key in MODEL_KEYS], device=device)
    dependence = click_dependence(models, settings)
    seconds["click_check"] = time.perf_counter() - started
    del models
    head_schedule = dataclasses.replace(
        USAM_HYPER_PARAMETERS, epochs=settings.head_epochs, lr=settings.head_learning_rate
    )
    # bfloat16 products halve the heads' training time on CPUs with native bfloat16 (measured on the test-bed's
    # store: 15.5 s against 29.5 s for three epochs) and leave the validation losses equal to 3 digits.
    head_precision = Precision.BFLOAT16 if has_fast_bfloat16(select_device(device)) else Precision.FLOAT32
    seconds["heads"] = seconds["calibration"] = seconds["evaluation"] = 0.0
    evaluations: list[dict[str, dict[str, Any]]] = []
    calibrations: list[dict[str, Any]] = []
    uses_heads = paths.heads(0, USES_HEAD_INPUTS, calibrated=True)
    with _UsesBesideHeads(paths, settings, uses_heads, device) as uses_job:
        for seed in range(seeds):
            evaluations.append({})
            calibrations.append({})
            for variant in variants:
                uses_job.share_cores()
                started = time.perf_counter()
                heads = train_from_store(
                    paths.store("train"), paths.heads(seed, variant), seed=seed, hyper_parameters=head_schedule,
                    inputs=INPUTS_OF_VARIANT[InputsVariant(variant)], progress=progress, device=device,
                    precision=head_precision,
                )  # fmt: skip
                seconds["heads"] += time.perf_counter() - started
                started = time.perf_counter()
                calibrations[seed][variant] = calibrate_and_check(paths, seed, variant)
                seconds["calibration"] += time.perf_counter() - started
                if seed == 0 and variant == USES_HEAD_INPUTS:
                    uses_job.start()
                uses_job.share_cores()
                started = time.perf_counter()
                evaluations[seed][variant] = {
                    which: _evaluate(paths, heads, seed, which, model, settings, progress, variant)
                    for which, model in (
                        (MAIN_EVALUATION, MODEL_NAMES["tiny"]),
                        (GAP_EVALUATION, MODEL_NAMES["tiny-early"]),
                    )
                }
                seconds["evaluation"] += time.perf_counter() - started
        # What the heads did not hide of the uses (all of them where they run here, after the heads).
        started = time.perf_counter()
        uses, pages = uses_job.result(progress=progress)
        seconds["uses"] = time.perf_counter() - started
    seconds.update({f"uses_{name}": value for name, value in uses.pop("seconds").items()})
    started = time.perf_counter()
    results = combine_results(
        paths, evaluations, settings, prompt_dependence=dependence, calibration=summarize_calibration(calibrations)
    )
    results["uses"] = {"heads": uses_heads.name, **uses}
    seconds["results"] = time.perf_counter() - started
    results["seconds"] = {key: round(value, 1) for key, value in seconds.items()}
    paths.results.mkdir(parents=True, exist_ok=True)
    write_json_atomically(results, paths.results / "results.json", indent=1)
    write_text_atomically(paths.results / "results.md", results_markdown(results, uses_pages=pages))
    return results


def _head_variants(inputs: Sequence[str]) -> list[str]:
    """The inputs variants to train, checked, duplicates dropped, in the given order."""
    from usam.heads import InputsVariant

    if isinstance(inputs, str):
        inputs = [inputs]
    variants = list(dict.fromkeys(str(check_choice(InputsVariant, value, "inputs variant")) for value in inputs))
    if USES_HEAD_INPUTS not in variants:
        raise InvalidInputError(
            f"the heads' inputs variants must include {USES_HEAD_INPUTS} (the uses run on its calibrated heads), got "
            f"{' '.join(variants) or 'none'}"
        )
    return variants


class _UsesBesideHeads:
    """The uses (:func:`usam.testbed.uses.run_testbed_uses`) in a process of their own, beside the later heads.

    The uses run SAM2 on single prompts, which a second thread barely speeds up, while the heads' matrix products
    use every core. So on a CPU with at least two cores the uses start as soon as their heads file exists (seed 0's
    calibrated tokens+signals heads), on one core with one thread, and the heads of the later seeds keep the other
    cores (:meth:`share_cores`, called between steps) until the uses are done. Elsewhere they run after the heads,
    here. Leaving the ``with`` block restores the thread count and shuts the process down.
    """

    def __init__(self, paths: TestbedPaths, settings: TestbedSettings, heads: Path, device: str | None) -> None:
        import os

        import torch

        from usam.devices import select_device

        self.arguments = (paths, settings, heads)
        self.device = device
        self.threads = torch.get_num_threads()
        self.beside = select_device(device).type == "cpu" and (os.cpu_count() or 1) >= 2 and self.threads >= 2
        self.pool: Any = None
        self.future: Any = None

    def __enter__(self) -> _UsesBesideHeads:
        return self

    def start(self) -> None:
        """Start the uses in their process (only where they run beside the heads)."""
        if not self.beside or self.future is not None:
            return
        import multiprocessing

        from usam.testbed.uses import run_testbed_uses

        # spawn, not fork: the parent's torch thread pools do not survive a fork.
        self.pool = multiprocessing.get_context("spawn").Pool(1, initializer=_limit_threads, initargs=(1,))
        # No progress bars there: they would garble the heads' bars.
        self.future = self.pool.apply_async(
            run_testbed_uses, self.arguments, {"device": self.device, "progress": False}
        )

    def share_cores(self) -> None:
        """Leave one core to the uses while they run, and give it back once they are done."""
        import torch

        running = self.future is not None and not self.future.ready()
        torch.set_num_threads(max(1, self.threads - 1) if running else self.threads)

    def result(self, *, progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
        """The uses' results: waited for where they run beside the heads, else run here now."""
        if self.future is None:
            from usam.testbed.uses import run_testbed_uses

            return run_testbed_uses(*self.arguments, device=self.device, progress=progress)
        return self.future.get()

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        import torch

        torch.set_num_threads(self.threads)
        if self.pool is None:
            return
        if exc_type is None:
            self.pool.close()
        else:
            self.pool.terminate()  # the run failed: do not wait minutes for uses nobody will read
        self.pool.join()


def extraction_workers(device: str | None = None) -> int:
    """Processes that extract the test-bed's shards side by side: one per core on a CPU, else one.

    The test-bed's models are small, so their calls are dominated by per-operation overhead that a second thread
    barely shortens; two single-thread processes on two cores extract about 1.5-1.7 times as fast as one process with
    two threads (measured on the test-bed: 7.6 s vs 6.5 s per 60 scenes without Monte Carlo, 62 s vs 45 s with).
    """
    import os

    from usam.devices import select_device

    if select_device(device).type != "cpu":
        return 1
    return max(1, min(EXTRACTION_SHARDS, os.cpu_count() or 1))


def extract_splits(
    paths: TestbedPaths,
    splits: Sequence[tuple[str, bool]],
    settings: TestbedSettings,
    *,
    device: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, float]:
    """Extract (or resume) the stores of ``splits``, each in :data:`EXTRACTION_SHARDS` shards, ``workers`` at a time.

    All shards of all splits wait in one queue, in the order given, so a core that one split's last shard leaves
    starts the next split's first shard at once instead of idling until the split's slowest shard ends, and the
    worker processes start once rather than once per split (on the pinned build the two shards of a split ended
    3-7 s apart). Each worker process builds the three models from their cards and runs its shards with
    ``threads = max(1, cores // workers)`` torch threads; with one worker the shards run one after another here.

    Args:
        paths: The test-bed folder.
        splits: ``(split, monte_carlo)`` per store, in the order to extract them.
        settings: The test-bed's settings (the extraction seed).
        device: Torch device of the models.
        workers: Processes running shards side by side.
        progress: Show a progress bar per shard.

    Returns:
        Per split the seconds from the end of the previous split's last shard (or the start) to the end of its own,
        so they add up to the extraction's time.

    Raises:
        UsamError: What a shard's extraction raised (the other shards' finished images stay in the store).
    """
    jobs = [
        (str(paths.root), split, monte_carlo, settings.extraction_seed, (index, EXTRACTION_SHARDS), device, progress)
        for split, monte_carlo in splits
        for index in range(EXTRACTION_SHARDS)
    ]
    started = time.perf_counter()
    finished: dict[str, float] = {}
    if workers <= 1:
        for job in jobs:
            _extract_shard(*job)
            finished[job[1]] = time.perf_counter()
    else:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn, not fork: the parent's torch thread pools do not survive a fork.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_limit_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(_extract_shard, *job): job[1] for job in jobs}
            for future in as_completed(futures):
                future.result()
                finished[futures[future]] = time.perf_counter()
    seconds, previous = {}, started
    for split, _ in splits:
        seconds[split] = max(finished[split] - previous, 0.0)
        previous = max(previous, finished[split])
    return seconds


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _extract_shard(
    root: str, split: str, monte_carlo: bool, seed: int, shard: tuple[int, int], device: str | None, progress: bool
) -> None:
    """One shard of a split's store (run in a worker process or here)."""
    from usam.datasets import open_dataset
    from usam.extraction import ExtractionOptions, build_models, run_extraction

    paths = TestbedPaths(Path(root))
    models = build_models([paths.card(key) for key in MODEL_KEYS], device=device)
    run_extraction(
        open_dataset("folder", paths.scenes(split), split),
        models,
        paths.store(split),
        options=ExtractionOptions(monte_carlo=monte_carlo, seed=seed),
        shard=shard,
        progress=progress,
    )


def click_dependence(models: dict[str, Any], settings: TestbedSettings) -> dict[str, float | None]:
    """Each model's prompt dependence on the first test scenes (:func:`usam.testbed.prompt_dependence`).

    Args:
        models: Wrapped models (:class:`usam.UncertainSAM`) by card name.
        settings: The test-bed's settings (test seed, image size, ``dependence_scenes``).
    """
    from usam.testbed.model_quality import prompt_dependence
    from usam.testbed.scenes import make_scene, scene_seed

    count = min(settings.dependence_scenes, settings.test_scenes)
    scenes = [make_scene(scene_seed(settings.test_seed, index), settings.image_size) for index in range(count)]
    return {name: _number(prompt_dependence(model, scenes)) for name, model in models.items()}


def _evaluate(
    paths: TestbedPaths,
    heads: Path,
    seed: int,
    which: str,
    model: str,
    settings: TestbedSettings,
    progress: bool,
    inputs: str,
) -> Any:
    """One of a seed's evaluations of one inputs variant on the test store (no token ablation)."""
    from usam.evaluation import run_evaluation

    return run_evaluation(
        paths.store("test"), heads, paths.evaluation(seed, which, inputs), model=model, seeds=settings.random_orders,
        ablation=False, progress=progress,
    )  # fmt: skip


def calibrate_and_check(paths: TestbedPaths, seed: int, inputs: str) -> dict[str, Any] | None:
    """Calibrate a seed's heads on the calibration split, write the calibrated copy, check it on the test split.

    Returns:
        The check's JSON (:class:`usam.evaluation.reliability.CalibrationCheck`): per IoU head the ECE before and
        after and the coverage of the bounds on the test rows, and under ``"maps"`` the kind of each head's
        calibration map; under ``"ece_change_samples"`` (in memory only, for :func:`summarize_calibration` to
        pool) each head's bootstrap samples of the ECE's change. None without IoU heads.
    """
    from usam.evaluation.reliability import calibrate_heads_file, check_calibration
    from usam.heads import load_heads

    out, calibration = calibrate_heads_file(
        paths.store("calibration"), paths.heads(seed, inputs), paths.heads(seed, inputs, calibrated=True)
    )
    check = check_calibration(paths.store("test"), load_heads(out))
    if check is None:
        return None
    return {
        **check.to_json(),
        "maps": {name: str(head.map_kind) for name, head in calibration.heads.items()},
        "ece_change_samples": {name: entry.ece_change_samples for name, entry in check.heads.items()},
    }


def summarize_calibration(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per inputs variant and IoU head: rows, ECE before and after, coverage (means over seeds), each seed's map kind.

    The ECE's change (after - before) is the mean over seeds with the percentile interval of the seeds' bootstrap
    samples pooled; the test rows and images, hence the resamples, are the same for every seed.

    Args:
        per_seed: Per seed, per inputs variant, the dictionary of :func:`calibrate_and_check`.
    """
    summary: dict[str, Any] = {}
    for inputs in per_seed[0]:
        checks = [seed_checks[inputs] for seed_checks in per_seed if seed_checks.get(inputs) is not None]
        if not checks:
            continue
        heads: dict[str, Any] = {}
        for name in checks[0]["heads"]:
            entries = [check["heads"][name] for check in checks if name in check["heads"]]
            coverage = {
                bound: {
                    alpha: _mean([entry["coverage"][bound][alpha] for entry in entries])
                    for alpha in entries[0]["coverage"][bound]
                }
                for bound in entries[0]["coverage"]
            }
            changes = [
                samples for check in checks if (samples := check.get("ece_change_samples", {}).get(name)) is not None
            ]
            low, high = percentile_interval(np.concatenate(changes)) if changes else (None, None)
            before = _mean([entry["ece_before"] for entry in entries])
            after = _mean([entry["ece_after"] for entry in entries])
            heads[name] = {
                "rows": entries[0]["rows"],
                "ece_before": before,
                "ece_after": after,
                "ece_change": None if before is None or after is None else after - before,
                "ece_change_interval": {"low": _number(low), "high": _number(high)},
                "coverage": coverage,
                "maps": [check.get("maps", {}).get(name) for check in checks if name in check["heads"]],
            }
        summary[inputs] = {"alphas": checks[0]["alphas"], "guarantee": checks[0]["guarantee"], "heads": heads}
    return summary


def _mean(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return _number(np.mean(defined)) if defined else None


def combine_results(
    paths: TestbedPaths,
    evaluations: list[dict[str, dict[str, Any]]],
    settings: TestbedSettings,
    *,
    prompt_dependence: dict[str, float | None] | None = None,
    calibration: dict[str, Any] | None = None,
) -> dict:
    """The results page's data: per scenario and measure the mean over seeds and the pooled bootstrap interval.

    The baselines are the same in every inputs variant's evaluation and are taken from the first; each variant's
    head measures are keyed ``<head> [<inputs>]``.

    Args:
        paths: The test-bed folder.
        evaluations: Per seed, per inputs variant (:data:`HEAD_VARIANTS`), its two
            :class:`usam.evaluation.EvaluationResult` (keys ``main``, ``model-gap``).
        settings: The test-bed's settings (bootstrap resamples, random orders).
        prompt_dependence: Each model's click check (:func:`click_dependence`), if measured.
        calibration: The calibration summary (:func:`summarize_calibration`), if measured.
    """
    variants = list(evaluations[0])
    scenarios: dict[str, Any] = {}
    for scenario in CORRECTION_SCENARIOS:
        merged: dict[str, Any] | None = None
        for inputs in variants:
            per_seed = [seed_results[inputs][SCENARIO_SOURCE[scenario.name]] for seed_results in evaluations]
            # The baselines do not depend on the heads: bootstrap them once, with the first variant.
            summary = _scenario_summary(scenario, per_seed, settings, heads_only=merged is not None)
            if merged is None:
                merged = {**summary, "measures": {}} if summary["status"] == "done" else summary
            if summary["status"] != "done":
                continue
            for key, measure in summary["measures"].items():
                if measure["kind"] in HEAD_MEASURE_KINDS:
                    label = measure["label"] if f"[{inputs}]" in measure["label"] else f"{measure['label']} [{inputs}]"
                    merged["measures"][f"{key} [{inputs}]"] = {**measure, "label": label, "inputs": inputs}
                else:
                    merged["measures"].setdefault(key, measure)
        scenarios[scenario.name] = merged
    first = evaluations[0][variants[0]][MAIN_EVALUATION]
    return {
        "settings": dataclasses.asdict(settings),
        "seeds": len(evaluations),
        "models": dict(MODEL_NAMES),
        "head_inputs": variants,
        "interval": {
            "confidence": 0.95,
            "method": (
                "percentile bootstrap over test objects, resamples shared by all seeds and pooled; the value is the "
                "mean over seeds"
            ),
            "resamples_per_seed": settings.bootstrap_resamples,
        },
        "scenarios": scenarios,
        "correlation": {
            inputs: [result[inputs][MAIN_EVALUATION].correlation.to_json() for result in evaluations]
            for inputs in variants
        },
        "correlation_model": first.model,
        "miou": store_miou(paths.store("test")),
        "prompt_dependence": dict(prompt_dependence or {}),
        "calibration": dict(calibration or {}),
    }


def _scenario_summary(
    scenario: Any, per_seed: list[Any], settings: TestbedSettings, *, heads_only: bool = False
) -> dict[str, Any]:
    """One scenario: each measure's mean relative AUC over seeds and its pooled bootstrap interval.

    With ``heads_only`` only the usam head measures are summarised. A baseline whose relative AUCs are the same for
    every seed (SAM's score, the entropies, random and oracle read the same test store whatever the heads) is
    bootstrapped once: the pooled samples of identical seeds are copies of one seed's, so one copy gives the same
    interval at a third of the cost with three seeds.
    """
    results = [evaluation.scenarios[scenario.name] for evaluation in per_seed]
    if any(str(result.status) != "done" for result in results):
        reasons = sorted({str(result.reason) for result in results if str(result.status) != "done"})
        return {"status": "skipped", "title": results[0].title, "reason": "; ".join(reasons)}
    keys = [key for key in results[0].measures if all(key in result.measures for result in results)]
    if heads_only:
        keys = [key for key in keys if str(results[0].measures[key].kind) in HEAD_MEASURE_KINDS]
    shared = {
        key
        for key in keys
        if str(results[0].measures[key].kind) not in HEAD_MEASURE_KINDS
        and all(
            result.measures[key].relative_auc_percent == results[0].measures[key].relative_auc_percent
            for result in results
        )
    }
    samples: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for index, (evaluation, result) in enumerate(zip(per_seed, results, strict=True)):
        wanted = keys if index == 0 else [key for key in keys if key not in shared]
        if not wanted:
            continue
        # One statistic gives every wanted measure on a resample, so the resample's references are shared.
        statistic, num_objects = _statistics(scenario, evaluation, result, wanted, settings)
        seed_samples = bootstrap_statistics(statistic, num_objects, resamples=settings.bootstrap_resamples, seed=0)
        for position, key in enumerate(wanted):
            samples[key].append(seed_samples[:, position])
    ranges = list(results[0].measures[keys[0]].relative_auc_percent) if keys else []
    measures: dict[str, Any] = {}
    for key in keys:
        low, high = percentile_interval(np.concatenate(samples[key]))
        values = np.array([[result.measures[key].relative_auc_percent[r] for r in ranges] for result in results])
        mean = values.mean(axis=0)
        measures[key] = {
            "label": results[0].measures[key].label,
            "kind": str(results[0].measures[key].kind),
            "relative_auc_percent": {
                r: {"value": _number(mean[i]), "lower": _number(low[i]), "upper": _number(high[i]),
                    "per_seed": [_number(v) for v in values[:, i]]}
                for i, r in enumerate(ranges)
            },
        }  # fmt: skip
    return {
        "status": "done",
        "title": results[0].title,
        "base_model": results[0].base_model,
        "corrected_model": results[0].corrected_model,
        "num_objects": results[0].num_objects,
        "measures": measures,
    }


def _statistics(
    scenario: Any, evaluation: Any, result: Any, keys: list[str], settings: TestbedSettings
) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The relative AUCs of the measures ``keys`` as one function of resampled object indices, and the objects' number.

    The function returns an array of shape (keys, ranges). The objects, measures and scores are the evaluation's own
    (:mod:`usam.evaluation.scenarios`), recomputed on the rows of the store the evaluation read; the no-correction
    and oracle curves of a resample are computed once for all its measures.
    """
    from usam.evaluation.measures import scenario_measures
    from usam.evaluation.rows import size_and_version
    from usam.evaluation.scenarios import (
        AUC_RANGES,
        range_weights,
        relative_aucs_of_rankings,
        scenario_objects,
        values_of,
    )
    from usam.metrics import relative_area

    heads = Path(evaluation.heads)
    stamp = heads.stat()
    rows = _evaluation_rows(str(evaluation.store), evaluation.model, str(heads), (stamp.st_mtime_ns, stamp.st_size))
    joined = result.corrected_model if scenario.corrected_model is not None else None
    objects = scenario_objects(rows, scenario, result.base_model, joined)
    base, corrected = objects.base_iou, objects.corrected_iou
    fractions = evaluation.fractions
    weights = range_weights(fractions)
    # The evaluation's ranges, in the order its results list them.
    order = [list(AUC_RANGES).index(r) for r in result.measures[keys[0]].relative_auc_percent]
    measures = scenario_measures(
        scenario, size_and_version(result.base_model)[0], size_and_version(result.corrected_model)[0]
    )
    rankings = {
        measure.key: (values_of(measure, rows, objects.base_rows), measure.higher_is_uncertain)
        for measure in measures
        if measure.key in keys
    }

    def statistic(index: np.ndarray) -> np.ndarray:
        resampled_base, resampled_corrected = base[index], corrected[index]
        # The resample's references, computed once for every measure, random and the oracle.
        none = weights @ no_correction_curve(resampled_base, fractions=fractions).mean_iou
        best = weights @ oracle_curve(resampled_base, resampled_corrected, fractions=fractions).mean_iou
        values: dict[str, np.ndarray] = {}
        ranked = relative_aucs_of_rankings(
            resampled_base, resampled_corrected, [(v[index], higher) for v, higher in rankings.values()], fractions,
            weights, references=(none, best),
        )  # fmt: skip
        values.update(zip(rankings, ranked, strict=True))
        if "random" in keys:
            curve = random_curve(
                resampled_base, resampled_corrected, num_seeds=settings.random_orders, fractions=fractions
            )
            values["random"] = relative_area(weights @ curve.mean_iou, none, best)
        values["oracle"] = relative_area(best, none, best)
        return np.stack([values[key][order] for key in keys])

    return statistic, base.size


@functools.lru_cache(maxsize=16)
def _evaluation_rows(store: str, model: str, heads: str, heads_stamp: tuple[int, int]) -> Any:
    """The rows an evaluation read (without features), read once for all scenarios that take them.

    ``heads_stamp`` (the heads file's modification time and size) keeps a rewritten heads file from being served
    the rows of the old one.
    """
    from usam.evaluation.rows import read_rows, resolve_models
    from usam.heads import load_heads
    from usam.store import StoreReader

    reader = StoreReader(store)
    models = resolve_models(model, reader.models(), Path(store))
    return read_rows(reader, models, load_heads(heads), keep_features=False, progress=False)


def store_miou(store: Path) -> dict[str, dict[str, float | None]]:
    """Mean IoU of each model in a store: best of three, SAM's pick and the dense prompt."""
    from usam.store import StoreReader

    table = StoreReader(store).read(["model", *MIOU_COLUMNS.values()])
    model = np.asarray(table.column("model").to_pylist())
    result: dict[str, dict[str, float | None]] = {}
    for name in sorted(set(model.tolist())):
        chosen = model == name
        result[name] = {
            label: _number(np.nanmean(np.asarray(table.column(column).to_numpy(zero_copy_only=False), float)[chosen]))
            for label, column in MIOU_COLUMNS.items()
        }
    return result


def results_markdown(results: dict[str, Any], *, uses_pages: dict[str, str] | None = None) -> str:
    """The results page in Markdown, from the data :func:`combine_results` returns.

    Args:
        results: The page's data.
        uses_pages: The Markdown of the uses' reports (:func:`usam.testbed.uses.run_testbed_uses`), if they ran.
    """
    lines = [
        "# usam on the test-bed",
        "",
        f"Heads trained with {results['seeds']} seed(s); each figure is the mean over seeds with a 95 % pooled "
        "bootstrap interval over test objects (relative AUC in %, 0 = no correction, 100 = oracle).",
        "",
        "## Models (test split, mIoU)",
        "",
        "| model | best of three | SAM's pick | dense prompt |",
        "|---|---|---|---|",
    ]
    dependence = results.get("prompt_dependence", {})
    lines[-2:] = [
        "| model | best of three | SAM's pick | dense prompt | prompt dependence |",
        "|---|---|---|---|---|",
    ]
    for name, miou in results["miou"].items():
        cells = [_format(miou[label], 3) for label in MIOU_COLUMNS] + [_format(dependence.get(name), 4)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Prompt dependence: the fraction of pixels where the masks for different single clicks in one test scene "
        "differ (0: the model ignores the click).",
    ]
    for scenario in results["scenarios"].values():
        lines += ["", f"## {scenario['title']}", ""]
        if scenario["status"] != "done":
            lines.append(f"Skipped: {scenario['reason']}")
            continue
        ranges = list(next(iter(scenario["measures"].values()))["relative_auc_percent"])
        lines += [
            f"{scenario['num_objects']} objects; base {scenario['base_model']}, "
            f"corrected {scenario['corrected_model']}.",
            "",
            "| measure | " + " | ".join(f"relative AUC {RANGE_LABELS[r]}" for r in ranges) + " |",
            "|---|" + "---|" * len(ranges),
        ]
        for measure in scenario["measures"].values():
            cells = [_interval(entry) for entry in measure["relative_auc_percent"].values()]
            lines.append(f"| {measure['label']} | " + " | ".join(cells) + " |")
    lines += _correlation_lines(results["correlation"], results["correlation_model"])
    lines += _calibration_lines(results.get("calibration", {}))
    if uses_pages:
        lines += _uses_lines(uses_pages)
    lines += _time_lines(results.get("seconds", {}))
    return "\n".join(lines) + "\n"


def _time_lines(seconds: dict[str, float]) -> list[str]:
    """Minutes of each phase of the run (``seconds`` of the results' JSON), parts indented under their phase."""
    if not seconds:
        return []
    phases = [key for key in seconds if not any(key.startswith(f"{other}_") for other in seconds)]
    total = sum(seconds[key] for key in phases)
    lines = ["", f"## Time of this run: {total / 60:.1f} minutes", ""]
    for phase in phases:
        parts = {key[len(phase) + 1 :]: value for key, value in seconds.items() if key.startswith(f"{phase}_")}
        # Parts longer than their phase ran beside other phases (the uses beside the heads): the phase's own
        # figure is the time the run waited for them.
        beside = " waited for after the phases before (its parts ran beside them)" * (
            sum(parts.values()) > seconds[phase] + 1.0
        )
        lines.append(f"- {phase.replace('_', ' ')}: {seconds[phase] / 60:.1f} min{beside}")
        lines += [f"  - {name.replace('_', ' ')}: {value / 60:.1f} min" for name, value in parts.items()]
    return lines


def _uses_lines(pages: dict[str, str]) -> list[str]:
    """The uses' own tables (their reports under ``uses/``), two heading levels down, under a heading of ours.

    A report's own title (its first line, if a level-1 heading) is left out: our heading names it.
    """

    def demoted(text: str) -> list[str]:
        lines = text.strip().splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
            while lines and not lines[0].strip():
                lines = lines[1:]
        return [f"##{line}" if line.startswith("#") else line for line in lines]

    lines = ["", "## Uses of the estimates (heads of seed 0)"]
    for title, key in (
        ("Cascade, mask choice, pseudo-labels (test store)", "store"),
        ("Next click (simulated user)", "clicks"),
        ("Automatic masks: COCO mask AP by ranking", "automatic"),
    ):
        lines += ["", f"### {title}", "", *demoted(pages[key])]
    return lines


def _correlation_lines(per_variant: dict[str, list[dict[str, Any]]], model: str) -> list[str]:
    """Pearson r of every value with every target, mean over seeds (the full matrices are in the JSON).

    The baselines come from the first inputs variant's tables (they do not depend on the heads); each variant's heads
    get their own rows.
    """
    variants = list(per_variant)
    first = per_variant[variants[0]][0]
    targets = [name for name in first["names"] if name.startswith("true_")]
    lines = ["", f"## Pearson correlation with each target ({model}, mean over seeds)", ""]
    if not targets:
        return [*lines, "Not computed (no target column)."]
    labels = dict(zip(first["names"], first["labels"], strict=True))
    lines += [
        "| value | " + " | ".join(labels[target] for target in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    rows = [(variants[0], name, labels[name]) for name in first["names"] if not name.startswith(("true_", "head_"))]
    for inputs in variants:
        table = per_variant[inputs][0]
        rows += [
            (inputs, name, f"{label} [{inputs}]")
            for name, label in zip(table["names"], table["labels"], strict=True)
            if name.startswith("head_")
        ]
    for inputs, name, label in rows:
        cells = [_format(_mean_correlation(per_variant[inputs], name, target), 3) for target in targets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _mean_correlation(per_seed: list[dict[str, Any]], name: str, target: str) -> float | None:
    return _mean(
        [
            table["matrix"][table["names"].index(target)][table["names"].index(name)]
            for table in per_seed
            if name in table["names"] and target in table["names"]
        ]
    )


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    """ECE before and after calibration and the bounds' coverage per IoU head on the test split."""
    if not calibration:
        return []
    lines = [
        "",
        "## Calibration (fitted on the calibration split, measured on the test split, mean over seeds)",
        "",
    ]
    for inputs, summary in calibration.items():
        alphas = [str(alpha) for alpha in summary["alphas"]]
        lines += [
            f"Heads reading {inputs}; guarantee: {summary['guarantee']}.",
            "",
            "| IoU head | test rows | map per seed | ECE before | ECE after | ECE change [95 %] | "
            + " | ".join(f"coverage α={alpha} (target {1 - float(alpha):.2f}) marginal / Mondrian" for alpha in alphas)
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(alphas),
        ]
        for name, head in summary["heads"].items():
            cells = [
                " / ".join(_format(head["coverage"].get(bound, {}).get(alpha), 3) for bound in ("marginal", "mondrian"))
                for alpha in alphas
            ]
            lines.append(
                f"| {name} | {head['rows']} | {', '.join(str(kind) for kind in head.get('maps', []))} | "
                f"{_format(head['ece_before'], 4)} | {_format(head['ece_after'], 4)} | {_ece_change(head)} | "
                + " | ".join(cells)
                + " |"
            )
        lines += [
            "",
            "ECE change: after − before, mean over seeds, with the 95 % interval of the seeds' bootstrap samples "
            "pooled (test images resampled; both ECEs on each resample). An interval that holds 0 is a change "
            "within the noise of measuring the ECE on these rows.",
            "",
        ]
    return [*lines, *_ece_tally_lines(calibration)]


def _ece_tally_lines(calibration: dict[str, Any]) -> list[str]:
    """One sentence counting, over every variant's IoU heads, the ECE's falls and rises and those beyond the noise."""
    heads = [head for summary in calibration.values() for head in summary["heads"].values()]
    changes = [head.get("ece_change") for head in heads]
    intervals = [head.get("ece_change_interval") or {} for head in heads]
    if not heads or any(change is None for change in changes):
        return []
    above = sum(1 for interval in intervals if (interval.get("low") or 0.0) > 0.0)
    below = sum(1 for interval in intervals if (interval.get("high") or 0.0) < 0.0)
    fell = sum(1 for change in changes if change < 0.0)
    rose = sum(1 for change in changes if change > 0.0)
    return [
        f"Over all {len(heads)} IoU heads (mean over seeds): the ECE fell for {fell}, rose for {rose} and stayed for "
        f"{len(heads) - fell - rose}; the interval of its change lies entirely below 0 for {below} and entirely above "
        f"0 (a rise beyond the noise) for {above}.",
        "",
    ]


def _ece_change(head: dict[str, Any]) -> str:
    interval = head.get("ece_change_interval") or {}
    return format_ece_change(head.get("ece_change"), (interval.get("low"), interval.get("high")))


def _interval(entry: dict[str, float | None]) -> str:
    return f"{_format(entry['value'], 1)} [{_format(entry['lower'], 1)}, {_format(entry['upper'], 1)}]"


def _format(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _number(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def recorded_settings(paths: TestbedPaths) -> TestbedSettings | None:
    """The settings a test-bed folder was built with, or None if it was not built.

    Raises:
        InvalidInputError: The settings file cannot be read.
    """
    try:
        content = json.loads(paths.settings.read_text(encoding="utf-8"))
        return TestbedSettings(**content["settings"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(f"cannot read {paths.settings} ({error}); delete it to rebuild") from None


def check_built_with(
    paths: TestbedPaths, recorded: TestbedSettings | None, wanted: TestbedSettings, remedy: str
) -> None:
    """Refuse a folder built with other settings than ``wanted``, except for :data:`RUN_SETTINGS`.

    Args:
        paths: The test-bed folder.
        recorded: Its recorded settings (:func:`recorded_settings`); None for a folder not built yet.
        wanted: The settings asked for now.
        remedy: What the user can do, appended to the error.

    Raises:
        InvalidInputError: A setting that decides the folder's scenes, models or stores differs; the message names
            each such setting with both values.
    """
    if recorded is None:
        return
    old, new = recorded.built_part(), wanted.built_part()
    if old != new:
        difference = ", ".join(f"{key} {old[key]} there, {new[key]} now" for key in old if old[key] != new[key])
        raise InvalidInputError(f"{paths.root} was built with other settings ({difference}); {remedy}")
