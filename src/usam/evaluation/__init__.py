"""The paper's evaluation of uncertainty estimates on a token store: correction curves, correlations, ablation.

:func:`run_evaluation` reads the rows of one SAM2 size from a token store (:mod:`usam.store`), runs the heads
of a heads file on them and writes into an output folder ``report.md`` (Markdown), ``results.json`` (every
number, curves included) and PNG plots:

* **Correction scenarios** (:data:`usam.metrics.CORRECTION_SCENARIOS`). Objects are ranked from most to least
  uncertain by a measure, the top fraction r is corrected, and the mean IoU over all objects is plotted against
  r. Each measure is scored by its relative AUC (:func:`usam.metrics.relative_auc`): 0 % is no correction,
  100 % the oracle, which corrects in order of the true gain. It is computed over r in [0, 1]
  (``"r_0_1"``) and over r in [0, 0.5] (``"r_0_0.5"``, the regime of correcting at most half of the objects).
* **Correlations** (the paper's Table 5): Pearson correlation between the true IoU and gaps, SAM's score, the
  entropies and the heads, on the rows of the evaluated model.
* **Inputs ablation** (optional): heads trained on the IoU token only, the mask token only, both, SAM2's scalar
  signals only and tokens + signals, scored by relative AUC per scenario.
* **Calibration** of the IoU heads: expected calibration error before and (for heads calibrated with
  ``usam calibrate``, :func:`fit_calibration`) after calibration, the coverage of the conformal IoU lower bounds
  and a reliability diagram (:mod:`~usam.evaluation.reliability`).

Rows and values of each scenario
--------------------------------
An object is a ``(dataset, image_key, object_id)`` triple. *Model selection* joins the tiny model's row of an
object (base IoU ``iou``, and every measure) with the large model's row (corrected IoU ``iou``), both of the
evaluated model's SAM2 version, whatever size is evaluated; objects lacking either row are dropped and counted.
The other three scenarios use the evaluated model's rows alone: *prompt refinement* ``iou`` ->
``iou_dense_prompt``, *task supervision* ``unsupervised_iou`` -> ``iou``, *segmentation uncertainty* ``iou``
-> 1.

The mask that is evaluated is the one whose IoU is the base IoU. For ``iou`` that is the best of the three
multimask outputs (``argmax(mask_ious)``), as in the paper; SAM's score is that output's score and the
entropies are the plain ``h_*`` columns. For task supervision the base is SAM's own pick
(``argmax(sam_scores)``), so SAM's score is the highest score and the entropies are the ``h_*_sam_pick``
columns (``h_task`` has no such variant: it describes all three outputs). The heads always read the IoU token
and the mask token of the best output (token k + 1 with the ``"true"`` pairing, k with ``"as-released"``; of
tied outputs, the one the store's recorded tie rule picks, ``"first"`` if it records none), built by the trainer's
own feature function, so that they see exactly the inputs they were trained on.

Measures: per scenario the matching head (``model_gap``, ``prompt_gap``, ``task_gap``; for segmentation
uncertainty the IoU head of the size, e.g. ``iou_tiny``), SAM's score, the entropies ``h_std``, ``h_all``,
``h_theta``, ``h_task``, ``h_prompt``, ``h_augmentation``, random order (mean of ``seeds`` seeded orders) and the
oracle. Two more head-based measures where an IoU head predicts the same thing another way: the IoU head of the
base (model selection ``iou_tiny``, prompt refinement the size head, task supervision ``iou_unsupervised``; a
low predicted IoU is corrected first), and the difference of the two IoU heads that predict the base and the
corrected IoU (``iou_large - iou_tiny``, ``iou_dense_prompt - iou_<size>``, ``iou_<size> - iou_unsupervised``),
a second estimate of the gain. Gap heads and entropies rank the highest values first; SAM's score and IoU heads
the lowest. A measure whose column is null for every object is skipped (and the report says so); one that is
null for some objects is scored on the objects where it is defined, against no correction and oracle curves
of those objects, and its object count is reported.

Modules
-------
* :mod:`~usam.evaluation.measures`: what can rank objects (:class:`Measure`, :class:`MeasureKind`), built from
  :mod:`usam.head_table`.
* :mod:`~usam.evaluation.rows`: reading the rows the scenarios need and running the heads on their tokens.
* :mod:`~usam.evaluation.scenarios`: the four correction scenarios, their curves and relative AUCs
  (:class:`ScenarioResult`, :class:`MeasureResult`).
* :mod:`~usam.evaluation.correlation`: the Pearson table (:class:`CorrelationResult`).
* :mod:`~usam.evaluation.ablation`: the inputs ablation (:class:`AblationResult`).
* :mod:`~usam.evaluation.departures`: this run against the paper's choices (:class:`RunDeparture`).
* :mod:`~usam.evaluation.reliability`: fitting the IoU heads' calibration on a store (:func:`fit_calibration`,
  :func:`calibrate_heads_file`) and checking it on another (:func:`check_calibration`, :class:`CalibrationCheck`).
* :mod:`~usam.evaluation.report`: ``report.md``.
* :mod:`~usam.evaluation.plots`: plots drawn on a given matplotlib ``Axes`` (:func:`plot_scenario`,
  :func:`plot_correlation`, :func:`plot_ablation`, :func:`plot_reliability`) and the PNG writer.
* :mod:`~usam.evaluation.run`: :func:`run_evaluation` and :class:`EvaluationResult`.
* :mod:`~usam.evaluation.automatic`: COCO mask AP of automatic masks ranked by SAM's score, the stability score
  and usam's predicted IoU (:func:`automatic_mask_ap`, :func:`run_automatic_evaluation`).
* :mod:`~usam.evaluation.uses`: the cascade, mask choice and pseudo-label filter on a store (:func:`evaluate_uses`).
* :mod:`~usam.evaluation.uses_report`: ``uses.md``, ``uses.json`` and their curves (:func:`write_uses_report`).
"""

from usam.evaluation.ablation import (
    ABLATION_SEED,
    ABLATION_TEST_FRACTION,
    ABLATION_VARIANTS,
    AblationResult,
    AblationScenario,
    AblationScore,
)
from usam.evaluation.automatic import automatic_mask_ap, run_automatic_evaluation
from usam.evaluation.correlation import CorrelationResult, correlation_table
from usam.evaluation.departures import RunDeparture
from usam.evaluation.measures import ENTROPY_MEASURES, Measure, MeasureKind, scenario_measures
from usam.evaluation.plots import plot_ablation, plot_correlation, plot_reliability, plot_scenario, write_plots
from usam.evaluation.reliability import (
    CalibrationCheck,
    HeadCheck,
    calibrate_heads_file,
    check_calibration,
    fit_calibration,
)
from usam.evaluation.report import report_markdown
from usam.evaluation.run import EvaluationResult, run_evaluation
from usam.evaluation.scenarios import AUC_RANGES, MeasureResult, ScenarioResult, Status
from usam.evaluation.uses import UsesResult, evaluate_uses
from usam.evaluation.uses_report import write_uses_report

__all__ = [
    "ABLATION_SEED",
    "ABLATION_TEST_FRACTION",
    "ABLATION_VARIANTS",
    "AUC_RANGES",
    "ENTROPY_MEASURES",
    "AblationResult",
    "AblationScenario",
    "AblationScore",
    "CalibrationCheck",
    "CorrelationResult",
    "EvaluationResult",
    "HeadCheck",
    "Measure",
    "MeasureKind",
    "MeasureResult",
    "RunDeparture",
    "ScenarioResult",
    "Status",
    "UsesResult",
    "automatic_mask_ap",
    "calibrate_heads_file",
    "check_calibration",
    "correlation_table",
    "evaluate_uses",
    "fit_calibration",
    "plot_ablation",
    "plot_correlation",
    "plot_reliability",
    "plot_scenario",
    "report_markdown",
    "run_automatic_evaluation",
    "run_evaluation",
    "scenario_measures",
    "write_plots",
    "write_uses_report",
]
