"""``UncertainSAM``: a SAM2 image predictor that also returns UncertainSAM estimates for every mask.

The wrapper calls the predictor's public ``set_image``/``predict`` and captures the decoder tokens with hooks that
exist only during the call (see :mod:`usam.sam2_adapter`), so the predictor is never modified. All loaded heads run
as one fused computation over all prompts and masks of a call.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam import sam2_adapter
from usam.calibration import DEFAULT_ALPHA, BoundKind, HeadsCalibration, alpha_index, check_alpha
from usam.click_map import click_map
from usam.devices import Precision
from usam.entropy import mask_entropy, pixel_entropy
from usam.errors import CheckpointError, HeadsFileError, InvalidInputError, UsamWarning
from usam.head_table import Pairing
from usam.heads import SIGNAL_INPUT, UncertaintyHeads, load_heads
from usam.images import as_rgb_uint8
from usam.model_card import ModelCard
from usam.models import SAM2ModelSpec
from usam.signals import PromptSignals, prompt_signals, signal_features
from usam.validation import check_choice


@dataclasses.dataclass
class UncertainPrediction:
    """Everything one :meth:`UncertainSAM.predict` call returns; plain arrays owned by the caller.

    The first three attributes are exactly what ``SAM2ImagePredictor.predict`` returns. Per-mask values have the
    shape of ``sam_scores``: (M,) for one prompt, (B, M) for B batched prompts, with M = 3 masks (multimask) or 1.

    Attributes:
        masks: (…, M, H, W) boolean masks (float32 logits with ``return_logits=True``) at image resolution.
        sam_scores: (…, M) SAM2's own IoU predictions.
        low_res_logits: (…, M, h, w) low-resolution mask logits (h = w = 256 for 1024-pixel models).
        uncertainty: Head name -> (…, M) estimates: predicted IoU for ``iou_*`` heads, predicted gain in
            [-0.5, 0.5] for ``*_gap`` heads.
        entropy: (…, M) mask entropy H_Std in bits of ``low_res_logits``. Computed on first access and kept
            (about 0.1 ms per mask on a CPU), so callers that only read the heads do not pay for it.
        iou_token: (…, D) the decoder's IoU token of each prompt.
        mask_tokens: (…, 4, D) all four mask tokens of each prompt.
        mask_token_index: (…, M) which mask token produced each returned mask (1, 2, 3 for multimask output).
        head_token_index: (…, M) which mask token the heads read for each mask (depends on the heads' pairing).
        image_size: (H, W) of the image.
        signals: SAM2's scalar signals of each prompt (:class:`usam.signals.PromptSignals` fields: ``(…, 4)`` per
            mask token, ``(…)`` for ``object_score_logit``), or None when neither the call nor the heads asked for
            them.
        calibrated_iou: Per calibrated IoU head (``usam calibrate``), (…, M) its calibrated IoU; empty for heads
            without calibration.
        iou_lower: Per calibrated IoU head, (…, M) a conformal lower bound on the true IoU: over masks like the
            calibration rows (the best of the three outputs), P(true IoU ≥ iou_lower) ≥ 1 − :attr:`alpha`. The
            guarantee is marginal (over masks), not for each mask; see :mod:`usam.calibration`.
        alpha: The miscoverage of :attr:`iou_lower`, or None without calibration.
        bound: Which conformal bound :attr:`iou_lower` is (``"mondrian"`` or ``"marginal"``), or None.
    """

    masks: np.ndarray
    sam_scores: np.ndarray
    low_res_logits: np.ndarray
    uncertainty: dict[str, np.ndarray]
    iou_token: np.ndarray
    mask_tokens: np.ndarray
    mask_token_index: np.ndarray
    head_token_index: np.ndarray
    image_size: tuple[int, int]
    signals: dict[str, np.ndarray] | None = None
    calibrated_iou: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    iou_lower: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    alpha: float | None = None
    bound: str | None = None

    def with_prompt_axis(self) -> UncertainPrediction:
        """This prediction with a leading prompt axis: itself when batched, else a copy with the axis of size 1.

        SAM2 drops the prompt axis when a call has a single prompt (its point arrays had no batch axis, or one of
        size 1); code that indexes prompts calls this first.
        """
        if self.sam_scores.ndim >= 2:
            return self

        def add(values: np.ndarray) -> np.ndarray:
            return values[None]

        def add_each(mapping: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
            return None if mapping is None else {name: add(value) for name, value in mapping.items()}

        return dataclasses.replace(
            self,
            masks=add(self.masks),
            sam_scores=add(self.sam_scores),
            low_res_logits=add(self.low_res_logits),
            uncertainty=add_each(self.uncertainty),
            iou_token=add(self.iou_token),
            mask_tokens=add(self.mask_tokens),
            mask_token_index=add(self.mask_token_index),
            head_token_index=add(self.head_token_index),
            signals=add_each(self.signals),
            calibrated_iou=add_each(self.calibrated_iou),
            iou_lower=add_each(self.iou_lower),
        )

    @functools.cached_property
    def entropy(self) -> np.ndarray:
        """(…, M) mask entropy H_Std in bits of each returned mask (see :func:`usam.entropy.mask_entropy`)."""
        return mask_entropy(torch.from_numpy(self.low_res_logits)).numpy()

    def uncertainty_map(self, resolution: str | tuple[int, int] = "image") -> np.ndarray:
        """Per-pixel binary entropy (bits) of each returned mask, for overlays; computed only when asked.

        Args:
            resolution: ``"low"`` for the decoder's resolution (…, M, h, w); ``"image"`` for the image's
                (…, M, H, W), upsampled from the low-resolution logits the way SAM2 upsamples masks (4 bytes per
                pixel and mask); or an (h, w) size, e.g. that of a downscaled figure.
        """
        logits = torch.from_numpy(self.low_res_logits)
        if isinstance(resolution, str) and resolution == "low":
            return pixel_entropy(logits).numpy()
        if isinstance(resolution, str) and resolution == "image":
            size = self.image_size
        elif isinstance(resolution, tuple) and len(resolution) == 2 and all(int(side) > 0 for side in resolution):
            size = (int(resolution[0]), int(resolution[1]))
        else:
            raise InvalidInputError(f"resolution must be 'low', 'image' or an (h, w) size, got {resolution!r}")
        flat = logits.reshape(-1, 1, *logits.shape[-2:])
        upsampled = torch.nn.functional.interpolate(flat, size, mode="bilinear", align_corners=False)
        return pixel_entropy(upsampled).reshape(*logits.shape[:-2], *size).numpy()


def prepare_heads(
    heads: UncertaintyHeads | str | Path | None, predictor: Any, device: torch.device
) -> UncertaintyHeads | None:
    """Heads ready to read a SAM2 predictor's tokens: loaded if a path, checked against its decoder, on ``device``.

    Warns (:class:`usam.UsamWarning`) when the heads were trained for another SAM2 version than the model's.

    Raises:
        HeadsFileError: The heads expect tokens of another size than the model's decoder emits (or a bad file).
    """
    if heads is None:
        return None
    if isinstance(heads, (str, Path)):
        heads = load_heads(heads)
    adapter = adapter_of(predictor)
    token_dim = adapter.token_dim_of(predictor)
    if heads.metadata.token_dim != token_dim:
        raise HeadsFileError(
            f"the heads expect {heads.metadata.token_dim}-d tokens but this SAM2 model's decoder emits "
            f"{token_dim}-d tokens; use heads trained for this model"
        )
    model_name = adapter.model_name_of(predictor)
    version = adapter.sam2_version_of(predictor)
    trained_for = heads.metadata.sam2_version
    if version and trained_for and version != trained_for:
        warnings.warn(
            f"these heads were trained for {trained_for} but the model is {model_name}; estimates may be off",
            UsamWarning,
            stacklevel=3,  # the code that builds the wrapper
        )
    return heads.to(device).eval()


def head_token_indices(mask_token_index: torch.Tensor, pairing: str) -> torch.Tensor:
    """The mask token a head reads for each returned mask, given the token that produced it.

    True pairing reads the producing token. The authors' code ("as-released") scores returned mask k of a
    multimask call with token k, i.e. the token before the producing one; for a single returned mask it reads
    token 0 when token 0 produced it and otherwise, like for multimask output, the token before.
    """
    if pairing == Pairing.AS_RELEASED:
        return (mask_token_index - 1).clamp(min=0)
    return mask_token_index


def head_features(
    iou_token: torch.Tensor,
    mask_tokens: torch.Tensor,
    token_index: torch.Tensor,
    inputs: list[str],
    signal_vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head inputs ``concat(iou_token, mask_token[, signals])`` for every returned mask, as (B * M, width).

    Args:
        iou_token: (B, D).
        mask_tokens: (B, 4, D).
        token_index: (B, M) mask token to pair with each mask.
        inputs: What to concatenate, in order (``iou_token``, ``mask_token``, ``signals``).
        signal_vectors: (B * M, SIGNAL_DIM) the masks' normalised signal vectors, for inputs with ``signals``.
    """
    batch, masks = token_index.shape
    dim = iou_token.shape[-1]
    paired = mask_tokens.gather(1, token_index.unsqueeze(-1).expand(batch, masks, dim))
    parts = {"iou_token": iou_token.unsqueeze(1).expand(batch, masks, dim), "mask_token": paired}
    if signal_vectors is not None:
        parts[SIGNAL_INPUT] = signal_vectors.to(paired.device).reshape(batch, masks, -1)
    return torch.cat([parts[name].float() for name in inputs], dim=-1).reshape(batch * masks, -1)


def call_head_features(
    heads: UncertaintyHeads, call: Any, head_index: torch.Tensor, computed: PromptSignals | None = None
) -> torch.Tensor:
    """The heads' inputs for every mask of one captured decoder call, as (B * M, width).

    Heads that read signals get the normalised signal vector of the token they read (the same vector as training's);
    the call must then have been captured with signals.

    Args:
        heads: The heads.
        call: The captured decoder call (``DecoderCall`` of a model adapter).
        head_index: (B, M) the mask token the heads read for each mask.
        computed: The call's signals, if already computed.
    """
    signal_vectors = None
    if heads.metadata.reads_signals:
        if computed is None:
            computed = prompt_signals(call.token_sam_scores, call.object_score_logits, call.token_logits)
        signal_vectors = heads.metadata.normalization.apply(signal_features(computed, head_index))
    return head_features(
        call.iou_token, call.mask_tokens, head_index.to(call.mask_tokens.device), heads.metadata.inputs, signal_vectors
    )


def adapter_of(predictor: Any) -> Any:
    """The adapter package that reaches a predictor's model library.

    A predictor of another backend names its adapter (``usam_adapter``, e.g. the transformers backend's); any other
    predictor is SAM2's. The adapter provides the SAM2 adapter's predictor functions (``DecoderTokenCapture``,
    ``inference_context``, ``token_dim_of``, ...).
    """
    return getattr(predictor, "usam_adapter", None) or sam2_adapter


class UncertainSAM:
    """Wrap a ``SAM2ImagePredictor`` to get UncertainSAM estimates with every prediction.

    Args:
        predictor: A ``sam2.sam2_image_predictor.SAM2ImagePredictor``, or a
            :class:`usam.transformers_adapter.TransformersImagePredictor` (a Hugging Face transformers model).
        heads: Heads from :func:`usam.load_heads`, a path to load them from, or None (entropy and tokens only).
        device: Where the heads run (default: the predictor's device).
        precision: What SAM2 runs in (``float32``, or ``bfloat16`` autocast); None for the device's default:
            bfloat16 on CUDA, as SAM2's demos run, float32 elsewhere (see
            :func:`usam.sam2_adapter.effective_precision`).
        alpha: Miscoverage of the IoU lower bound ``iou_lower`` that calibrated heads report (default 0.1:
            the bound holds for at least 90 % of masks); settable later as :attr:`alpha`.
        bound: ``"mondrian"`` (per bin of the calibrated IoU, the default) or ``"marginal"`` (one quantile).

    Example:
        >>> model = UncertainSAM(predictor, usam.load_heads("heads.safetensors"))  # doctest: +SKIP
        >>> model.set_image(image)  # doctest: +SKIP
        >>> result = model.predict(point_coords=[[500, 375]], point_labels=[1])  # doctest: +SKIP
        >>> result.uncertainty["model_gap"]  # doctest: +SKIP
    """

    def __init__(
        self,
        predictor: Any,
        heads: UncertaintyHeads | str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        precision: Precision | str | None = None,
        alpha: float = DEFAULT_ALPHA,
        bound: BoundKind | str = BoundKind.MONDRIAN,
    ) -> None:
        self._adapter = adapter_of(predictor)
        self._adapter.check_image_predictor(predictor)
        self.predictor = predictor
        decoder = self._adapter.mask_decoder_of(predictor)
        self.device = torch.device(device) if device is not None else next(decoder.parameters()).device
        self.precision: Precision = self._adapter.effective_precision(self.device, precision)
        self.heads = prepare_heads(heads, predictor, self.device)
        # Parsed once: predict only applies it, and the uncalibrated path does nothing more.
        self.calibration: HeadsCalibration | None = self.heads.calibration if self.heads is not None else None
        self.bound = check_choice(BoundKind, bound, "bound")
        self.alpha = alpha

    @property
    def alpha(self) -> float:
        """Miscoverage of ``iou_lower``: P(true IoU ≥ iou_lower) ≥ 1 − alpha over masks (marginal)."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if self.calibration is not None:
            alpha_index(value, self.calibration.alphas)  # refuses an α below the smallest stored level
        self._alpha = check_alpha(value)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | SAM2ModelSpec | ModelCard = "sam2.1-tiny",
        heads: UncertaintyHeads | str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
        precision: Precision | str | None = None,
        alpha: float = DEFAULT_ALPHA,
        bound: BoundKind | str = BoundKind.MONDRIAN,
        **build_kwargs: Any,
    ) -> UncertainSAM:
        """Build a released SAM2 model (weights downloaded on first use) or a card's, and wrap its image predictor.

        Args:
            model: Model name, e.g. ``sam2.1-tiny`` (see :data:`usam.models.SAM2_MODELS`), or a model card or the
                path of one (see :mod:`usam.model_card`).
            heads: Heads or a path to them.
            checkpoint: Local checkpoint file; skips the download.
            device: CUDA if available, else CPU.
            precision: What SAM2 runs in (see the class).
            alpha: Miscoverage of the IoU lower bound of calibrated heads (see the class).
            bound: Which conformal bound (see the class).
            **build_kwargs: Passed to :func:`usam.sam2_adapter.build_sam2_model`.
        """
        sam_model = sam2_adapter.build_sam2_model(model, checkpoint, device=device, **build_kwargs)
        return cls(sam2_adapter.make_image_predictor(sam_model), heads, precision=precision, alpha=alpha, bound=bound)

    @property
    def model_name(self) -> str | None:
        """The wrapped model's name (a release's, or a model card's) when usam built it, else None."""
        return self._adapter.model_name_of(self.predictor)

    @property
    def input_size(self) -> int:
        """Side of the model's square input in pixels (1024 for Meta's releases); images are resized to it."""
        return self._adapter.low_res_mask_size(self.predictor) * 4

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the image the predictor holds (set through any wrapper or the predictor itself), or None."""
        return self._adapter.image_size_of(self.predictor)

    def set_image(self, image: np.ndarray) -> None:
        """Encode an image (H x W x 3 uint8 RGB; grayscale, RGBA and 16-bit are converted)."""
        image = as_rgb_uint8(image)
        with self._adapter.inference_context(self.device, self.precision):
            self.predictor.set_image(image)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        signals: bool = False,
    ) -> UncertainPrediction:
        """Predict masks like ``SAM2ImagePredictor.predict`` and estimate their uncertainty.

        Arguments are SAM2's: ``point_coords`` (N, 2) or (B, N, 2) in pixels (x, y), ``point_labels`` (N,) or
        (B, N), ``box`` (4,) or (B, 4) as x0, y0, x1, y1, ``mask_input`` (1, h, w) or (B, 1, h, w) low-res logits.
        ``signals=True`` also returns SAM2's scalar signals (:mod:`usam.signals`) in ``result.signals``, from the
        same decoder call; heads that read signals get them (and return them) without asking.

        A model whose card asks for click-map prompting (:mod:`usam.model_card`) gets each prompt's click map as its
        ``mask_input``; it cannot take one from the caller.

        Raises:
            InvalidInputError: No image set, no prompt, or a malformed prompt (NaN, outside the image, ...), or a
                ``mask_input`` for a click-map model.
            CheckpointError: SAM2 returned NaN or infinite scores or logits (its weights are broken).
            HeadsFileError: The heads returned NaN or infinite estimates.
        """
        point_coords, point_labels, box, mask_input = self._checked_prompts(
            point_coords, point_labels, box, mask_input, normalize_coords
        )
        mask_input = self._with_click_map(point_coords, point_labels, box, mask_input, normalize_coords)
        # Telling the capture what the call asks for lets a multimask call get by with one hook.
        heads_read_signals = self.heads is not None and self.heads.metadata.reads_signals
        signals = signals or heads_read_signals
        # Only SAM2's capture records the scalar signals; other backends are asked for tokens alone.
        capture_options = {"signals": True} if signals else {}
        capture = self._adapter.DecoderTokenCapture(
            self.predictor, multimask_output=multimask_output, **capture_options
        )
        with capture, self._adapter.inference_context(self.device, self.precision):
            masks, sam_scores, low_res_logits = self.predictor.predict(
                point_coords=point_coords,
                point_labels=point_labels,
                box=box,
                mask_input=mask_input,
                multimask_output=multimask_output,
                return_logits=return_logits,
                normalize_coords=normalize_coords,
            )
        call = capture.single_call()
        if not return_logits:
            # SAM2 returns 0/1 as float32 (4 bytes per pixel and mask); a bool copy is a quarter of that.
            masks = masks > 0
        self._check_finite("SAM2 model", {"scores": sam_scores, "mask logits": low_res_logits})
        per_mask_shape = sam_scores.shape
        head_index = head_token_indices(
            call.mask_token_index, self.heads.metadata.pairing if self.heads is not None else "true"
        )
        uncertainty: dict[str, np.ndarray] = {}
        computed = None
        if signals:
            computed = prompt_signals(call.token_sam_scores, call.object_score_logits, call.token_logits)
        with torch.no_grad():
            if self.heads is not None:
                features = call_head_features(self.heads, call, head_index, computed)
                values = self.heads(features.to(self.device)).cpu().numpy()
                uncertainty = {
                    name: values[index].reshape(per_mask_shape) for index, name in enumerate(self.heads.names)
                }
                self._check_finite("heads", uncertainty)
        calibrated_iou, iou_lower = {}, {}
        if self.calibration is not None:
            calibrated_iou, iou_lower = self.calibration.apply(uncertainty, self._alpha, self.bound)
        squeeze = sam_scores.ndim == 1  # SAM2 drops the batch axis of a single prompt; so do we
        signal_arrays = None
        if computed is not None:
            signal_arrays = {name: value[0] if squeeze else value for name, value in computed.as_arrays().items()}
        return UncertainPrediction(
            masks=masks,
            sam_scores=sam_scores,
            low_res_logits=low_res_logits,
            uncertainty=uncertainty,
            iou_token=_owned(call.iou_token, squeeze),
            mask_tokens=_owned(call.mask_tokens, squeeze),
            mask_token_index=_owned(call.mask_token_index, squeeze),
            head_token_index=_owned(head_index, squeeze),
            image_size=self.image_size,
            signals=signal_arrays,
            calibrated_iou=calibrated_iou,
            iou_lower=iou_lower,
            alpha=self._alpha if iou_lower else None,
            bound=str(self.bound) if iou_lower else None,
        )

    def _check_finite(self, source: str, arrays: dict[str, np.ndarray]) -> None:
        """Refuse NaN or infinite outputs: every number derived from them would be meaningless."""
        broken = [name for name, values in arrays.items() if not np.isfinite(values).all()]
        if not broken:
            return
        if source == "heads":
            raise HeadsFileError(f"the heads produced NaN or infinite estimates ({', '.join(broken)})")
        raise CheckpointError(
            f"{self._adapter.describe_model(self.predictor)} produced NaN or infinite {' and '.join(broken)}; its "
            "weights are broken (a corrupt or wrongly converted checkpoint?)"
        )

    def predict_masks(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SAM2's own prediction, without tokens or heads, in this wrapper's precision.

        The fast path for Monte Carlo samples and baselines; arguments as :meth:`predict`.

        Returns:
            ``(masks, sam_scores, low_res_logits)`` as ``SAM2ImagePredictor.predict`` returns them.

        Raises:
            InvalidInputError: No image set, no prompt, or a malformed prompt.
        """
        point_coords, point_labels, box, _ = self._checked_prompts(point_coords, point_labels, box, None, True)
        mask_input = self._with_click_map(point_coords, point_labels, box, None, True)
        with self._adapter.inference_context(self.device, self.precision):
            return self.predictor.predict(
                point_coords=point_coords,
                point_labels=point_labels,
                box=box,
                mask_input=mask_input,
                multimask_output=multimask_output,
            )

    def _with_click_map(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        normalize_coords: bool,
    ) -> np.ndarray | None:
        """The mask input to give SAM2: the user's, or for a model whose card asks for it, each prompt's click map.

        Such a model was trained to read its prompt from the click map as well (it ignores sparse prompts alone), so
        the map goes with every prompt, built exactly as in training (:func:`usam.click_map.click_map`, from the
        positive clicks and the box).

        Raises:
            InvalidInputError: A ``mask_input`` for a click-map model (its mask input is taken by the click map).
        """
        prompting = self._adapter.click_map_prompting_of(self.predictor)
        if prompting is None:
            return mask_input
        if mask_input is not None:
            raise InvalidInputError(
                f"{self._adapter.describe_model(self.predictor)} takes the click map of its points and box as its mask "
                "input (its model card says prompting: click_map), so it cannot take a mask_input; pass points or a box"
            )
        height, width = self.image_size
        scale = np.ones(2, dtype=np.float32) if normalize_coords else np.array([width, height], dtype=np.float32)
        # The prompts agree on their batch size (checked before); without a batch axis there is one prompt.
        if point_coords is not None and point_coords.ndim == 3:
            batched, count = True, point_coords.shape[0]
        elif box is not None and box.ndim == 2:
            batched, count = True, box.shape[0]
        else:
            batched, count = False, 1
        maps = []
        for index in range(count):
            positive = None
            if point_coords is not None:
                coords = point_coords[index] if point_coords.ndim == 3 else point_coords
                labels = point_labels[index] if point_labels.ndim == 2 else point_labels
                positive = coords[labels == 1] * scale
            prompt_box = None
            if box is not None:
                prompt_box = (box[index] if box.ndim == 2 else box) * np.tile(scale, 2)
            maps.append(
                click_map(
                    positive,
                    prompt_box,
                    map_size=prompting.map_size,
                    image_hw=(height, width),
                    model_image_size=self._adapter.low_res_mask_size(self.predictor) * 4,
                    sigma_px=prompting.sigma_px,
                    amplitude=prompting.amplitude,
                )
            )
        stacked = np.stack(maps)[:, None]  # (B, 1, h, w)
        return stacked if batched else stacked[0]

    def _checked_prompts(
        self,
        point_coords: Any,
        point_labels: Any,
        box: Any,
        mask_input: Any,
        normalize_coords: bool,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        if self.image_size is None:
            raise InvalidInputError("no image is set; call set_image(image) before predict()")
        if point_coords is None and box is None and mask_input is None:
            raise InvalidInputError("no prompt given: pass point_coords with point_labels, a box, or a mask_input")
        height, width = self.image_size
        limit_x, limit_y = (float(width), float(height)) if normalize_coords else (1.0, 1.0)
        batch_sizes: dict[str, int] = {}
        if point_coords is not None:
            if point_labels is None:
                raise InvalidInputError("point_labels must be given with point_coords (1 = foreground, 0 = background)")
            point_coords = _as_float_array(point_coords, "point_coords")
            # SAM2's labels: -1 padding, 0 background, 1 foreground, 2/3 box corners.
            point_labels = _as_float_array(point_labels, "point_labels")
            if point_coords.ndim not in (2, 3) or point_coords.shape[-1] != 2 or point_coords.shape[-2] == 0:
                raise InvalidInputError(f"point_coords must have shape (N, 2) or (B, N, 2), got {point_coords.shape}")
            if point_labels.shape != point_coords.shape[:-1]:
                raise InvalidInputError(
                    f"point_labels has shape {point_labels.shape}, expected {point_coords.shape[:-1]} "
                    "to match point_coords"
                )
            if not ((point_labels >= -1) & (point_labels <= 3) & (point_labels == np.round(point_labels))).all():
                raise InvalidInputError(
                    f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(point_labels)}"
                )
            _check_inside(point_coords[..., 0], limit_x, "point x coordinate", normalize_coords)
            _check_inside(point_coords[..., 1], limit_y, "point y coordinate", normalize_coords)
            batch_sizes["point_coords"] = point_coords.shape[0] if point_coords.ndim == 3 else 1
        elif point_labels is not None:
            raise InvalidInputError("point_labels given without point_coords")
        if box is not None:
            box = _as_float_array(box, "box")
            if box.ndim not in (1, 2) or box.shape[-1] != 4:
                raise InvalidInputError(f"box must have shape (4,) or (B, 4) as x0, y0, x1, y1, got {box.shape}")
            _check_inside(box[..., 0::2], limit_x, "box x coordinate", normalize_coords)
            _check_inside(box[..., 1::2], limit_y, "box y coordinate", normalize_coords)
            if (box[..., 2] < box[..., 0]).any() or (box[..., 3] < box[..., 1]).any():
                raise InvalidInputError("box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1")
            batch_sizes["box"] = box.shape[0] if box.ndim == 2 else 1
        if mask_input is not None:
            mask_input = _as_float_array(mask_input, "mask_input")
            side = self._adapter.low_res_mask_size(self.predictor)
            if mask_input.ndim not in (3, 4) or mask_input.shape[-3:] != (1, side, side):
                raise InvalidInputError(
                    f"mask_input must have shape (1, {side}, {side}) or (B, 1, {side}, {side}) (low-resolution "
                    f"logits as returned in low_res_logits), got {mask_input.shape}"
                )
            batch_sizes["mask_input"] = mask_input.shape[0] if mask_input.ndim == 4 else 1
        if len(set(batch_sizes.values())) > 1:
            raise InvalidInputError(f"prompts disagree on the number of objects: {batch_sizes}")
        if batch_sizes.get("mask_input", 1) > 1 and len(batch_sizes) == 1:
            raise InvalidInputError(
                "SAM2 cannot batch mask inputs alone; give a point or box per mask, or call once per mask"
            )
        return point_coords, point_labels, box, mask_input


def _as_float_array(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be numeric") from None
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return array


def _check_inside(values: np.ndarray, limit: float, what: str, in_pixels: bool) -> None:
    if values.size and (values.min() < 0 or values.max() > limit):
        unit = f"in [0, {limit:g}] (image pixels)" if in_pixels else "in [0, 1] (normalised)"
        bad = values[(values < 0) | (values > limit)].flat[0]
        raise InvalidInputError(f"{what} {bad:g} is outside the image; coordinates must lie {unit}")


def _owned(tensor: torch.Tensor, squeeze: bool) -> np.ndarray:
    array = tensor.detach().float().cpu().numpy().copy() if tensor.is_floating_point() else tensor.cpu().numpy().copy()
    return array[0] if squeeze else array
