"""The uses of the estimates on the test-bed: cascade, mask choice, pseudo-labels, next click, automatic masks.

Run by ``usam testbed run`` after the heads of seed 0 are trained (:func:`run_testbed_uses`); each use writes its
own report under ``DIR/uses/`` with the same code as its command (``usam evaluate-uses``, ``usam evaluate-clicks``,
``usam evaluate-automatic``), and the figures join the results page:

- ``uses/store/``: the cascade (``testbed-tiny`` -> ``testbed-large``), the mask choice and the pseudo-label filter,
  scored on the test store (:func:`usam.evaluation.evaluate_uses`);
- ``uses/clicks/``: the simulated user on the first test scenes with the fully trained tiny
  (:func:`usam.uses.run_click_simulation`, resumable);
- ``uses/automatic/``: COCO mask AP of the automatic mask generator with the fully trained tiny on the first test
  scenes, ranked by SAM's score, the stability score and usam's predicted IoU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

USES_FOLDER = "uses"
AUTOMATIC_POINTS_PER_SIDE = 16
"""Points per side of the automatic mask generator on the 128-pixel scenes (SAM2's default 32 is for 1024)."""
AUTOMATIC_THRESHOLDS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
"""SAM2's filters off: the test-bed models' softer masks stay below SAM2's defaults (0.8 and 0.95; measured on a test
scene: highest SAM score 0.73, so every mask was dropped), and the AP compares rankings, which the filters would
pre-empt. Box NMS stays on."""


def run_testbed_uses(
    paths: Any, settings: Any, heads: Path, *, device: str | None = None, progress: bool = True
) -> tuple[dict[str, Any], dict[str, str]]:
    """Evaluate every use on the test-bed and write their reports under ``DIR/uses``.

    Args:
        paths: The test-bed's :class:`usam.testbed.TestbedPaths`.
        settings: Its :class:`usam.testbed.TestbedSettings` (``use_scenes``: scenes of the live uses).
        heads: The heads file the uses read (seed 0's).
        device: Torch device of the live uses.
        progress: Show progress bars.

    Returns:
        ``({"store": uses.json's content, "clicks": the click summary, "automatic": the three APs, "seconds": each
        use's seconds}, pages)``, where ``pages`` holds the Markdown of the three reports (keys ``store``,
        ``clicks``, ``automatic``).
    """
    from usam.automatic import UncertainMaskGenerator
    from usam.datasets import open_dataset
    from usam.evaluation import evaluate_uses, run_automatic_evaluation
    from usam.evaluation.automatic import ap_table
    from usam.evaluation.uses_report import uses_markdown, write_uses_report
    from usam.heads import load_heads
    from usam.predictor import UncertainSAM
    from usam.testbed.pipeline import MODEL_NAMES
    from usam.uses import SimulationOptions, run_click_simulation, summarize_runs, write_click_report
    from usam.uses.simulated_user import recorded_identity, simulation_identity

    out = paths.root / USES_FOLDER
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    loaded = load_heads(heads)
    store_result = evaluate_uses(
        paths.store("test"), loaded, small=MODEL_NAMES["tiny-early"], large=MODEL_NAMES["large"],
        resamples=settings.bootstrap_resamples,
    )  # fmt: skip
    write_uses_report(store_result, out / "store")
    pages = {"store": uses_markdown(store_result)}
    seconds["store"], started = time.perf_counter() - started, time.perf_counter()

    scenes = paths.scenes("test")
    model = UncertainSAM.from_pretrained(paths.card("tiny"), loaded, device=device)
    options = SimulationOptions(seed=settings.extraction_seed)
    records = out / "clicks" / "clicks.records.json"
    recorded = recorded_identity(records)
    if recorded is not None and recorded != simulation_identity(model):
        # Every run retrains the heads: an earlier run's records are of other heads, so they are stale, not resumable.
        records.unlink()
    runs = run_click_simulation(
        model, open_dataset("folder", scenes, "test", limit=settings.use_scenes), options, records_path=records,
        progress=progress,
    )  # fmt: skip
    clicks = summarize_runs(runs, seed=settings.extraction_seed)
    context = {"model": MODEL_NAMES["tiny"], "heads": str(heads), "scenes": settings.use_scenes}
    written = write_click_report(clicks, options.as_record(), out / "clicks", context)
    pages["clicks"] = written["markdown"].read_text(encoding="utf-8")
    seconds["clicks"], started = time.perf_counter() - started, time.perf_counter()

    generator = UncertainMaskGenerator(
        model, loaded, device=device, points_per_side=AUTOMATIC_POINTS_PER_SIDE, **AUTOMATIC_THRESHOLDS
    )
    automatic = run_automatic_evaluation(
        open_dataset("folder", scenes, "test", limit=settings.use_scenes), generator, out / "automatic",
        progress=progress, context={**context, "points_per_side": AUTOMATIC_POINTS_PER_SIDE, **AUTOMATIC_THRESHOLDS},
    )  # fmt: skip
    pages["automatic"] = ap_table(automatic)
    seconds["automatic"] = time.perf_counter() - started
    return {"store": store_result.to_json(), "clicks": clicks, "automatic": automatic, "seconds": seconds}, pages
