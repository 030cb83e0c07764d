"""Uses of UncertainSAM's estimates, each a small API that wraps :class:`usam.UncertainSAM` objects.

Modules: ``cascade`` (model cascade: a small SAM2 escalates objects to a large one when its estimates say so),
``mask_choice`` (pick among SAM2's three masks by predicted IoU; flag ambiguous objects by predicted task gap),
``pseudo_labels`` (keep trusted masks of a folder of images and write them as COCO JSON), ``requirements`` (which
heads a use needs, and the errors that name missing ones). Their evaluation on a token store is
:mod:`usam.evaluation.uses`. Model-agnostic: nothing here imports a model library.
"""

from usam.uses.cascade import CascadePrediction, CascadeSAM, Escalation, EscalationRule, object_prediction
from usam.uses.mask_choice import DEFAULT_TASK_GAP_THRESHOLD, MaskChoice, choose_masks, pick_by_predicted_iou
from usam.uses.pseudo_labels import (
    KeepBy,
    PseudoLabelFilter,
    PseudoLabelSummary,
    label_image,
    read_prompts,
    write_pseudo_labels,
)
from usam.uses.requirements import own_iou_head, require_heads

__all__ = [
    "DEFAULT_TASK_GAP_THRESHOLD",
    "CascadePrediction",
    "CascadeSAM",
    "Escalation",
    "EscalationRule",
    "KeepBy",
    "MaskChoice",
    "PseudoLabelFilter",
    "PseudoLabelSummary",
    "choose_masks",
    "label_image",
    "object_prediction",
    "own_iou_head",
    "pick_by_predicted_iou",
    "read_prompts",
    "require_heads",
    "write_pseudo_labels",
]
