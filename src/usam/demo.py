"""The browser demo: click on an image (or drag a box by two corners) and watch usam's estimates react.

The callbacks are plain functions of numpy arrays (:class:`DemoSession`), so they are tested without a browser;
:func:`build_app` wires them into a gradio page, imported only when the demo starts (``pip install 'usam[demo]'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from usam.errors import UsamError
from usam.predictor import UncertainSAM
from usam.validation import StrEnum, check_choice
from usam.visualize import describe_estimates, figure_size

MEANINGLESS_BANNER = "RANDOM weights: the masks and numbers below are meaningless; they only show that the demo runs."
"""Shown above the page when the model or the heads have random weights."""

NO_PROMPT_TEXT = "Click on the image (positive or negative) or set two box corners to see masks and estimates."

_MASK_COLOURS = np.array([(30, 120, 255), (255, 150, 20), (40, 200, 90)], dtype=np.float32)
_MASK_OPACITY = 0.5


class ClickMode(StrEnum):
    """What a click on the image adds to the prompt."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    BOX = "box corner"


class GradioMissingError(UsamError):
    """gradio is not installed."""


@dataclasses.dataclass
class Prompt:
    """The prompt built by the user's clicks, in image pixels.

    Attributes:
        points: Clicks (x, y).
        labels: 1 for a positive click, 0 for a negative one.
        box_corners: Up to two corners (x, y) of a box; the box exists once both are set.
    """

    points: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    box_corners: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    @property
    def box(self) -> np.ndarray | None:
        """x0, y0, x1, y1 of the box, or None before its second corner."""
        if len(self.box_corners) < 2:
            return None
        (xa, ya), (xb, yb) = self.box_corners[-2:]
        return np.array([min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)], dtype=np.float32)

    @property
    def empty(self) -> bool:
        """Whether nothing usable was given yet (no click, no complete box)."""
        return not self.points and self.box is None

    def add(self, mode: ClickMode | str, x: float, y: float) -> Prompt:
        """A new prompt with the click added (a third box corner starts a new box)."""
        mode = check_choice(ClickMode, mode, "click mode")
        prompt = Prompt(list(self.points), list(self.labels), list(self.box_corners))
        if mode is ClickMode.BOX:
            prompt.box_corners = (prompt.box_corners if len(prompt.box_corners) < 2 else []) + [(float(x), float(y))]
        else:
            prompt.points.append((float(x), float(y)))
            prompt.labels.append(1 if mode is ClickMode.POSITIVE else 0)
        return prompt


@dataclasses.dataclass
class DemoView:
    """What the page shows after a prompt.

    Attributes:
        masks: The image with the masks tinted (usam's pick outlined first) and the prompt drawn, uint8 RGB.
        uncertainty: The per-pixel uncertainty (entropy, bits) of usam's pick over the greyed image, uint8 RGB.
        text: Every estimate in words (Markdown), SAM's pick versus usam's, and the suggested next click.
        next_click: The suggested next click (x, y), or None.
    """

    masks: np.ndarray | None
    uncertainty: np.ndarray | None
    text: str
    next_click: tuple[int, int] | None = None


class DemoSession:
    """The demo's callbacks around one :class:`usam.UncertainSAM`.

    Args:
        model: The model with its heads.
        meaningless: Whether the weights (model or heads) are random: every answer then starts with a banner.
    """

    def __init__(self, model: UncertainSAM, *, meaningless: bool = False) -> None:
        self.model = model
        self.meaningless = meaningless
        self._image_key: str | None = None

    def _set_image(self, image: np.ndarray) -> None:
        # set_image is the expensive step (the image encoder): run it once per image, not once per click.
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(image.shape)
        if key != self._image_key:
            self.model.set_image(image)
            self._image_key = key

    def segment(self, image: np.ndarray | None, prompt: Prompt) -> DemoView:
        """Predict the prompt's masks on the image and describe them.

        Args:
            image: H x W x 3 uint8 RGB image (None before an image is chosen).
            prompt: The clicks and box so far.
        """
        banner = f"**{MEANINGLESS_BANNER}**\n\n" if self.meaningless else ""
        if image is None:
            return DemoView(None, None, banner + "Upload or pick an image first.")
        image = _as_rgb(image)
        if prompt.empty:
            return DemoView(image, None, banner + NO_PROMPT_TEXT)
        self._set_image(image)
        coords = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2) if prompt.points else None
        labels = np.asarray(prompt.labels) if prompt.points else None
        prediction = self.model.predict(point_coords=coords, point_labels=labels, box=prompt.box, multimask_output=True)
        usam_pick, sam_pick, choice_note = self._picks(prediction)
        lines = [banner + f"**usam's pick: mask {usam_pick}**; SAM's pick: mask {sam_pick}. {choice_note}", ""]
        for index in range(prediction.sam_scores.shape[-1]):
            words = describe_estimates(
                float(prediction.sam_scores[index]),
                float(prediction.entropy[index]),
                {name: float(values[index]) for name, values in prediction.uncertainty.items()},
                area=int(prediction.masks[index].sum()),
            )
            marks = " (usam's pick)" * (index == usam_pick) + " (SAM's pick)" * (index == sam_pick)
            lines += [f"**mask {index}**{marks}", *[f"- {line}" for line in words], ""]
        next_click = self._next_click(prompt, lines)
        size = figure_size(image.shape[:2])
        order = [usam_pick] + [index for index in range(prediction.masks.shape[0]) if index != usam_pick]
        masks_image = _tint_masks(image, prediction.masks, order)
        uncertainty_image = _uncertainty_overlay(image, prediction.uncertainty_map(size)[usam_pick])
        for picture in (masks_image, uncertainty_image):
            _draw_prompt(picture, prompt, next_click, image.shape[:2])
        return DemoView(masks_image, uncertainty_image, "\n".join(lines), next_click)

    def _picks(self, prediction: Any) -> tuple[int, int, str]:
        from usam.uses.mask_choice import choose_masks

        sam_pick = int(np.argmax(prediction.sam_scores))
        try:
            choice = choose_masks(prediction, self.model)
        except UsamError as error:  # heads without the model's IoU head: SAM's pick is all there is
            return sam_pick, sam_pick, f"(usam cannot pick: {error})"
        note = f"usam picks the highest {choice.iou_head} ({float(choice.predicted_iou):.3f})."
        if choice.show_all_masks is not None and bool(choice.show_all_masks):
            note += f" Predicted task gap {float(choice.task_gap):+.3f}: ambiguous, look at all three masks."
        return int(choice.index), sam_pick, note

    def _next_click(self, prompt: Prompt, lines: list[str]) -> tuple[int, int] | None:
        from usam.uses.next_click import PROMPT_GAP_HEAD, propose_next_click
        from usam.uses.requirements import loaded_heads

        if not prompt.points or prompt.box is not None or PROMPT_GAP_HEAD not in loaded_heads(self.model):
            return None
        try:
            proposal = propose_next_click(self.model, np.asarray(prompt.points), np.asarray(prompt.labels))
        except UsamError as error:
            lines.append(f"(no next click: {error})")
            return None
        x, y = (int(value) for value in proposal.point)
        verdict = "another click should help" if proposal.needed else "no further click is needed"
        lines.append(
            f"**next click:** ({x}, {y}) — predicted prompt gap {proposal.prompt_gap:+.3f} vs τ "
            f"{proposal.threshold:+.3f}: {verdict}"
        )
        return (x, y) if proposal.needed else None


def _as_rgb(image: np.ndarray) -> np.ndarray:
    from usam.images import as_rgb_uint8

    return as_rgb_uint8(np.asarray(image))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(image.shape[:2]) == size:
        return image.copy()
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BOX)).copy()


def _resized_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = ((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]).astype(np.intp)
    columns = ((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]).astype(np.intp)
    return mask[np.ix_(rows, columns)]


def _tint_masks(image: np.ndarray, masks: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """The image (downscaled for display) with the masks tinted, the first of ``order`` drawn on top."""
    size = figure_size(image.shape[:2])
    shown = _resized(image, size).astype(np.float32)
    for rank, index in reversed(list(enumerate(order))):
        mask = _resized_mask(np.asarray(masks[index], dtype=bool), size)
        opacity = _MASK_OPACITY if rank == 0 else _MASK_OPACITY / 3
        shown[mask] = (1 - opacity) * shown[mask] + opacity * _MASK_COLOURS[rank % len(_MASK_COLOURS)]
    return shown.clip(0, 255).astype(np.uint8)


def _uncertainty_overlay(image: np.ndarray, uncertainty_map: np.ndarray) -> np.ndarray:
    """The per-pixel entropy (0..1 bit, magma) over a grey copy of the image."""
    from matplotlib import colormaps

    grey = _resized(image, uncertainty_map.shape).astype(np.float32).mean(axis=2, keepdims=True)
    colour = colormaps["magma"](np.clip(uncertainty_map, 0.0, 1.0))[..., :3] * 255
    weight = np.clip(uncertainty_map, 0.0, 1.0)[..., None] * 0.8
    return ((1 - weight) * grey + weight * colour).clip(0, 255).astype(np.uint8)


def _draw_prompt(
    picture: np.ndarray, prompt: Prompt, next_click: tuple[int, int] | None, image_size: tuple[int, int]
) -> None:
    """Mark the clicks (green positive, red negative), the box and the suggested next click (yellow) in place."""
    scale_y, scale_x = picture.shape[0] / image_size[0], picture.shape[1] / image_size[1]
    radius = max(2, round(max(picture.shape[:2]) / 100))

    def dot(x: float, y: float, colour: tuple[int, int, int], hollow: bool = False) -> None:
        column, row = round(x * scale_x), round(y * scale_y)
        ys, xs = np.ogrid[: picture.shape[0], : picture.shape[1]]
        distance = np.hypot(ys - row, xs - column)
        picture[(distance <= radius) & ((distance >= radius - 1.5) if hollow else True)] = colour

    for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
        dot(x, y, (40, 220, 70) if label == 1 else (235, 35, 35))
    for x, y in prompt.box_corners:
        dot(x, y, (255, 255, 255))
    box = prompt.box
    if box is not None:
        x0, y0, x1, y1 = (round(v * s) for v, s in zip(box, (scale_x, scale_y, scale_x, scale_y), strict=True))
        x1, y1 = min(x1, picture.shape[1] - 1), min(y1, picture.shape[0] - 1)
        picture[y0 : y1 + 1, [x0, x1]] = (255, 255, 255)
        picture[[y0, y1], x0 : x1 + 1] = (255, 255, 255)
    if next_click is not None:
        dot(*next_click, (255, 220, 0), hollow=True)


def import_gradio() -> Any:
    """gradio, or a one-line error that says how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise GradioMissingError(
            f"the demo needs gradio ({error}): install it with pip install 'usam[demo]'"
        ) from error
    return gradio


def build_app(session: DemoSession, examples: Sequence[np.ndarray] = ()) -> Any:
    """The gradio page of the demo (not started: call ``launch`` on it).

    Args:
        session: The callbacks and their model.
        examples: Images the user can pick instead of uploading one.
    """
    gr = import_gradio()

    def on_click(image: Any, prompt: Prompt, mode: str, event: Any) -> tuple[Any, ...]:
        x, y = event.index[:2]
        prompt = prompt.add(mode, x, y)
        view = session.segment(image, prompt)
        return prompt, view.masks, view.uncertainty, view.text

    # gradio passes the click's pixel to the parameter annotated with its SelectData class; postponed annotations
    # are strings it cannot resolve, so the class is set here.
    on_click.__annotations__["event"] = gr.SelectData

    def on_reset(image: Any) -> tuple[Any, ...]:
        view = session.segment(image, Prompt())
        return Prompt(), view.masks, None, view.text

    with gr.Blocks(title="usam demo") as app:
        gr.Markdown("# usam: uncertainty for every SAM2 mask")
        if session.meaningless:
            gr.Markdown(f"## ⚠ {MEANINGLESS_BANNER}")
        prompt_state = gr.State(Prompt())
        with gr.Row():
            with gr.Column():
                image_input = gr.Image(type="numpy", label="image: upload or pick, then click", elem_id="usam-input")
                mode = gr.Radio(ClickMode.values(), value=str(ClickMode.POSITIVE), label="a click adds")
                reset = gr.Button("clear clicks")
                if examples:
                    gr.Examples([[example] for example in examples], inputs=[image_input])
            with gr.Column():
                masks_output = gr.Image(type="numpy", label="masks (usam's pick strongest)", elem_id="usam-masks")
                uncertainty_output = gr.Image(
                    type="numpy", label="per-pixel uncertainty of usam's pick", elem_id="usam-uncertainty"
                )
        estimates = gr.Markdown(NO_PROMPT_TEXT, elem_id="usam-estimates")
        outputs = [prompt_state, masks_output, uncertainty_output, estimates]
        image_input.select(on_click, inputs=[image_input, prompt_state, mode], outputs=outputs)
        reset.click(on_reset, inputs=[image_input], outputs=outputs)
        image_input.upload(on_reset, inputs=[image_input], outputs=outputs)
    return app
