"""Model cascade (accuracy against cost): run a small SAM2, escalate an object to a large one only when worth it.

:class:`CascadeSAM` holds two :class:`usam.UncertainSAM` models and has their call signature (``set_image``,
``predict``). Every object is predicted by the small model first; an object escalates to the large model when the
small model's estimate, read on the mask usam would pick (:mod:`usam.uses.mask_choice`; SAM's pick when the small
model has no IoU head), passes the rule's threshold:

- ``model-gap:τ``: the predicted model gap (IoU the large model would gain) is above τ (needs the ``model_gap``
  head);
- ``iou:τ``: the predicted IoU of the small model's own size head is below τ (needs e.g. ``iou_tiny``).

The large model encodes the image only when the first object of that image escalates, and once per image; the
escalated objects run in one batched call, so each object's answer is what its model gives alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from usam.errors import HeadsFileError, InvalidInputError
from usam.head_table import HEADS
from usam.uses.mask_choice import pick_by_predicted_iou
from usam.uses.requirements import own_iou_head, require_heads
from usam.validation import StrEnum, check_choice, check_float

SMALL, LARGE = "small", "large"
"""The two roles of a cascade's models, as :attr:`CascadePrediction.answered_by` names them."""


class EscalationRule(StrEnum):
    """What decides that an object goes to the large model."""

    MODEL_GAP = "model-gap"
    """The predicted model gap is above the threshold (τ in [-0.5, 0.5])."""
    LOW_IOU = "iou"
    """The small model's predicted IoU is below the threshold (τ in [0, 1])."""


@dataclasses.dataclass(frozen=True)
class Escalation:
    """An escalation rule and its threshold τ.

    Example:
        >>> rule = Escalation.parse("model-gap:0.05")
        >>> rule, rule.escalates(np.array([0.01, 0.2])).tolist()
        (Escalation(rule=<EscalationRule.MODEL_GAP: 'model-gap'>, threshold=0.05), [False, True])
    """

    rule: EscalationRule
    threshold: float

    def __post_init__(self) -> None:
        rule = check_choice(EscalationRule, self.rule, "escalation rule")
        # A gap head reports values in [-offset, offset], an IoU head in [0, 1]: a threshold outside never decides.
        gap_range = HEADS["model_gap"].output_offset
        minimum, maximum = (-gap_range, gap_range) if rule is EscalationRule.MODEL_GAP else (0.0, 1.0)
        threshold = check_float(self.threshold, f"the {rule} escalation threshold", minimum=minimum, maximum=maximum)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "threshold", threshold)

    @classmethod
    def parse(cls, spec: str) -> Escalation:
        """``RULE:THRESHOLD`` as written on the command line, e.g. ``model-gap:0.05`` or ``iou:0.7``.

        Raises:
            InvalidInputError: A malformed spec, an unknown rule or a threshold out of range.
        """
        rule, separator, number = str(spec).partition(":")
        forms = " or ".join(f"{name}:THRESHOLD" for name in EscalationRule.values())
        if not separator:
            raise InvalidInputError(f"escalation must be {forms} (e.g. model-gap:0.05 or iou:0.7), got {spec!r}")
        try:
            threshold = float(number)
        except ValueError:
            raise InvalidInputError(f"the escalation threshold must be a number, got {number!r} in {spec!r}") from None
        return cls(check_choice(EscalationRule, rule.strip(), "escalation rule"), threshold)

    def escalates(self, estimate: np.ndarray) -> np.ndarray:
        """Which objects escalate, given the small model's estimate per object (the rule's head)."""
        values = np.asarray(estimate, dtype=np.float64)
        return values > self.threshold if self.rule is EscalationRule.MODEL_GAP else values < self.threshold

    def decision_head(self, small: Any) -> str:
        """The head of the small model whose estimate decides.

        Raises:
            HeadsFileError: The small model lacks it (the message names the head).
        """
        purpose = f"a cascade that escalates by {self.rule}"
        if self.rule is EscalationRule.MODEL_GAP:
            require_heads(small, ["model_gap"], purpose)
            return "model_gap"
        return own_iou_head(small, purpose)


@dataclasses.dataclass
class CascadePrediction:
    """What a cascade call returns: both models' predictions where run, and per object which model answered.

    Attributes:
        small: The small model's prediction of every object.
        large: The large model's prediction of the escalated objects only (in their order), or None if none
            escalated.
        escalated: ``(B,)`` whether each object escalated (``(1,)`` for an unbatched call).
        estimate: ``(B,)`` the small model's decision estimate per object (read on ``decision_mask``).
        decision_mask: ``(B,)`` the small model's mask the estimate was read on.
        decision_head: The head whose estimate decided.
        escalation: The rule and threshold.
        model_names: Name of the small and the large model (None for a model usam did not build).
        batched: Whether the call had a batch axis (then the merged arrays keep it).
    """

    small: Any
    large: Any | None
    escalated: np.ndarray
    estimate: np.ndarray
    decision_mask: np.ndarray
    decision_head: str
    escalation: Escalation
    model_names: dict[str, str | None]
    batched: bool

    @property
    def num_objects(self) -> int:
        """Number of objects (prompts) of the call."""
        return int(self.escalated.size)

    @property
    def answered_by(self) -> list[str]:
        """Per object, ``"small"`` or ``"large"``: the model whose masks are the answer."""
        return [LARGE if flag else SMALL for flag in self.escalated.tolist()]

    @property
    def escalated_fraction(self) -> float:
        """The share of objects that escalated: the cascade's cost beyond the small model."""
        return float(self.escalated.mean()) if self.escalated.size else 0.0

    def answer(self, index: int) -> Any:
        """The answering model's prediction of object ``index``, as that model alone returns it for one prompt."""
        if not 0 <= index < self.num_objects:
            raise InvalidInputError(f"object index must be in [0, {self.num_objects}), got {index}")
        if self.escalated[index]:
            position = int(np.count_nonzero(self.escalated[:index]))
            return object_prediction(self.large, position)
        return object_prediction(self.small, index)

    def _merged(self, field: str) -> np.ndarray:
        stacked = np.stack([getattr(self.answer(index), field) for index in range(self.num_objects)])
        return stacked if self.batched else stacked[0]

    @property
    def masks(self) -> np.ndarray:
        """Masks of the answering model per object, shaped as one model's ``masks``."""
        return self._merged("masks")

    @property
    def sam_scores(self) -> np.ndarray:
        """SAM scores of the answering model per object."""
        return self._merged("sam_scores")

    @property
    def low_res_logits(self) -> np.ndarray:
        """Low-resolution logits of the answering model per object."""
        return self._merged("low_res_logits")

    def merged(self) -> Any:
        """One :class:`usam.UncertainPrediction` holding each object's answer (for files and figures).

        Raises:
            InvalidInputError: The two models report different heads, so the estimates cannot share one table.
        """
        if self.large is not None and set(self.large.uncertainty) != set(self.small.uncertainty):
            raise InvalidInputError(
                "the cascade's models report different heads; load the same heads file into both to merge answers"
            )
        answers = [self.answer(index) for index in range(self.num_objects)]

        def stacked(values: list[np.ndarray]) -> np.ndarray:
            return np.stack(values) if self.batched else values[0]

        fields = ("masks", "sam_scores", "low_res_logits", "iou_token", "mask_tokens", "mask_token_index")
        return dataclasses.replace(
            self.small,
            **{field: stacked([getattr(answer, field) for answer in answers]) for field in fields},
            head_token_index=stacked([answer.head_token_index for answer in answers]),
            uncertainty={name: stacked([a.uncertainty[name] for a in answers]) for name in self.small.uncertainty},
        )


def object_prediction(prediction: Any, index: int) -> Any:
    """One object of a (maybe batched) :class:`usam.UncertainPrediction`, shaped as an unbatched prediction."""
    if prediction.sam_scores.ndim == 1:
        if index != 0:
            raise InvalidInputError(f"an unbatched prediction has one object, asked for object {index}")
        return prediction
    return dataclasses.replace(
        prediction,
        masks=prediction.masks[index],
        sam_scores=prediction.sam_scores[index],
        low_res_logits=prediction.low_res_logits[index],
        uncertainty={name: values[index] for name, values in prediction.uncertainty.items()},
        iou_token=prediction.iou_token[index],
        mask_tokens=prediction.mask_tokens[index],
        mask_token_index=prediction.mask_token_index[index],
        head_token_index=prediction.head_token_index[index],
    )


class CascadeSAM:
    """Two SAM2 models as one: the small one answers unless its estimates say the large one is worth running.

    Args:
        small: The cheap :class:`usam.UncertainSAM`, with the heads the rule reads.
        large: The expensive one (any heads or none; its estimates are reported where it runs).
        escalation: An :class:`Escalation`, or its command-line form (``"model-gap:0.05"``, ``"iou:0.7"``).

    Raises:
        HeadsFileError: The small model lacks the rule's head (the message names it).
        InvalidInputError: A bad rule or threshold.

    Example:
        >>> cascade = CascadeSAM(tiny, large, "model-gap:0.05")  # doctest: +SKIP
        >>> cascade.set_image(image)  # doctest: +SKIP
        >>> result = cascade.predict(point_coords=[[500, 375]], point_labels=[1])  # doctest: +SKIP
        >>> result.answered_by, result.masks.shape  # doctest: +SKIP
    """

    def __init__(self, small: Any, large: Any, escalation: Escalation | str) -> None:
        self.small = small
        self.large = large
        self.escalation = escalation if isinstance(escalation, Escalation) else Escalation.parse(escalation)
        self.decision_head = self.escalation.decision_head(small)
        # The estimate is read on the mask usam would pick; without an IoU head of the small model, on SAM's pick.
        try:
            self._pick_head: str | None = own_iou_head(small, "picking the small model's mask")
        except HeadsFileError:
            self._pick_head = None
        self._image: np.ndarray | None = None
        self._large_has_image = False

    @property
    def heads(self) -> Any:
        """The small model's heads (the ones that decide)."""
        return self.small.heads

    @property
    def model_names(self) -> dict[str, str | None]:
        """Name of the small and the large model."""
        return {SMALL: getattr(self.small, "model_name", None), LARGE: getattr(self.large, "model_name", None)}

    def set_image(self, image: np.ndarray) -> None:
        """Encode an image with the small model; the large model encodes it only when an object escalates."""
        self.small.set_image(image)
        self._image = image
        self._large_has_image = False

    def decision_estimate(self, small_prediction: Any) -> tuple[np.ndarray, np.ndarray]:
        """The mask the decision is read on and the small model's estimate there, per object.

        Args:
            small_prediction: The small model's :class:`usam.UncertainSAM` prediction (one or B batched prompts).

        Returns:
            ``(decision_mask, estimate)``, each ``(B,)`` (``(1,)`` for an unbatched prediction): usam's pick (SAM's
            pick without the small model's IoU head) and the rule's head read on it; :meth:`Escalation.escalates`
            of the estimate is the decision.
        """
        batched = small_prediction.sam_scores.ndim == 2
        scores = small_prediction.sam_scores if batched else small_prediction.sam_scores[None]
        if self._pick_head is not None:
            values = small_prediction.uncertainty[self._pick_head]
            decision_mask = pick_by_predicted_iou(values if batched else values[None])
        else:
            decision_mask = np.argmax(scores, axis=-1)
        decision_values = small_prediction.uncertainty[self.decision_head]
        decision_values = decision_values if batched else decision_values[None]
        estimate = np.take_along_axis(decision_values, decision_mask[:, None], axis=-1)[:, 0]
        return decision_mask, estimate

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> CascadePrediction:
        """Predict every object with the small model and the escalated ones again with the large model.

        Arguments are :meth:`usam.UncertainSAM.predict`'s (one prompt, or B batched prompts).

        Raises:
            InvalidInputError: No image set, or a malformed prompt.
        """
        if self._image is None:
            raise InvalidInputError("no image is set; call set_image(image) before predict()")
        options = {
            "multimask_output": multimask_output,
            "return_logits": return_logits,
            "normalize_coords": normalize_coords,
        }
        small = self.small.predict(point_coords, point_labels, box, mask_input, **options)
        batched = small.sam_scores.ndim == 2
        decision_mask, estimate = self.decision_estimate(small)
        escalated = self.escalation.escalates(estimate)
        large = None
        if escalated.any():
            if not self._large_has_image:
                self.large.set_image(self._image)
                self._large_has_image = True
            chosen = np.flatnonzero(escalated)
            prompts = [_select(value, chosen, batched) for value in (point_coords, point_labels, box, mask_input)]
            large = self.large.predict(*prompts, **options)
            if large.sam_scores.ndim == 1 and chosen.size > 1:
                raise InvalidInputError("the large model returned one object for several escalated prompts")
        return CascadePrediction(
            small=small,
            large=large,
            escalated=escalated,
            estimate=estimate,
            decision_mask=decision_mask,
            decision_head=self.decision_head,
            escalation=self.escalation,
            model_names=self.model_names,
            batched=batched,
        )


def _select(value: Any, chosen: np.ndarray, batched: bool) -> Any:
    """The escalated objects' part of one prompt argument (the whole argument for an unbatched call)."""
    if value is None or not batched:
        return value
    array = np.asarray(value)
    return array[chosen]
