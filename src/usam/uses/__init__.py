"""Uses of UncertainSAM's estimates, each a small API that wraps :class:`usam.UncertainSAM` objects.

Modules: ``cascade`` (model cascade: a small SAM2 escalates objects to a large one when its estimates say so),
``mask_choice`` (pick among SAM2's three masks by predicted IoU; flag ambiguous objects by predicted task gap),
``pseudo_labels`` (keep trusted masks of a folder of images and write them as COCO JSON), ``requirements`` (which
heads a use needs, and the errors that name missing ones), ``next_click`` (where to click next: strategies that
propose a click's location, and the baselines), ``simulated_user`` (a simulated user who clicks where a strategy
proposes; NoC, mIoU after k clicks, ask only when needed), ``click_report`` (the JSON, Markdown table and figure of
a simulated-user run). The store evaluation of the first three is :mod:`usam.evaluation.uses`. Model-agnostic:
nothing here imports a model library.
"""

from usam.uses.cascade import CascadePrediction, CascadeSAM, Escalation, EscalationRule, object_prediction
from usam.uses.click_report import write_click_report
from usam.uses.mask_choice import DEFAULT_TASK_GAP_THRESHOLD, MaskChoice, choose_masks, pick_by_predicted_iou
from usam.uses.next_click import AnswerMask, ClickStrategy, NextClick, propose_click, propose_next_click
from usam.uses.pseudo_labels import (
    KeepBy,
    PseudoLabelFilter,
    PseudoLabelSummary,
    label_image,
    read_prompts,
    write_pseudo_labels,
)
from usam.uses.requirements import own_iou_head, require_heads
from usam.uses.simulated_user import (
    ObjectRun,
    SimulationOptions,
    ask_when_needed,
    number_of_clicks,
    run_click_simulation,
    simulate_image,
    summarize_runs,
)

__all__ = [
    "DEFAULT_TASK_GAP_THRESHOLD",
    "AnswerMask",
    "CascadePrediction",
    "CascadeSAM",
    "ClickStrategy",
    "Escalation",
    "EscalationRule",
    "KeepBy",
    "MaskChoice",
    "NextClick",
    "ObjectRun",
    "PseudoLabelFilter",
    "PseudoLabelSummary",
    "SimulationOptions",
    "ask_when_needed",
    "choose_masks",
    "label_image",
    "number_of_clicks",
    "object_prediction",
    "own_iou_head",
    "pick_by_predicted_iou",
    "propose_click",
    "propose_next_click",
    "read_prompts",
    "require_heads",
    "run_click_simulation",
    "simulate_image",
    "summarize_runs",
    "write_click_report",
    "write_pseudo_labels",
]
