"""Everything that touches SAM2: building models, loading checkpoints, and capturing decoder tokens with hooks.

This is the only module of usam that imports ``sam2`` or knows its internals. Tokens are captured with forward
hooks on the mask decoder's submodules (SAM2 is never patched); the hooks exist only while a
:class:`DecoderTokenCapture` is active, so a predictor is left exactly as it was.

Where the tokens are (``MaskDecoder.predict_masks``): the two-way transformer returns ``hs``; ``hs[:, s]`` is the
IoU token and ``hs[:, s+1:s+5]`` the four mask tokens. The IoU token is the input of ``iou_prediction_head`` and
mask token i the input of ``output_hypernetworks_mlps[i]``, so forward pre-hooks on those modules see them.

Submodules: :mod:`usam.sam2_adapter.testbed` (SAM2 with gradients, for training test-bed models) and
:mod:`usam.sam2_adapter.automatic` (SAM2's automatic mask generator carrying per-mask estimates through its filters).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from usam.devices import Precision, select_device
from usam.errors import CheckpointError, InvalidInputError, UsamError
from usam.model_card import ClickMapPrompting, ModelCard, resolve_model
from usam.models import SAM2ModelSpec
from usam.torchvision_fix import ensure_torchvision
from usam.validation import check_choice, check_int

NUM_MASK_TOKENS = 4
"""SAM2's decoder has one single-mask token (0) and three multimask tokens (1, 2, 3)."""

IMAGE_SIZE_MULTIPLE = 32
"""SAM2's input size must be a multiple of this: Hiera downsamples by 32 and the feature sizes assume it."""


def _import_sam2() -> Any:
    try:
        ensure_torchvision()
        importlib.import_module("sam2.build_sam")  # initialises Hydra's config module
        importlib.import_module("sam2.sam2_image_predictor")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "sam2":
            raise UsamError(
                "SAM2 is not installed; install it with `pip install usam[sam2]` or from "
                "github.com/facebookresearch/sam2 (see the README)"
            ) from None
        raise
    return sys.modules["sam2"]


def effective_precision(device: torch.device | str, precision: Precision | str | None = None) -> Precision:
    """The number type SAM2 runs in on ``device`` when ``precision`` is asked for.

    None means the device's default: bfloat16 on CUDA (as SAM2's own demos run), float32 elsewhere (bfloat16 is slow
    without hardware for it). An explicit precision is honoured on every device: on a CPU bfloat16 pays off only with
    bfloat16 hardware (AVX512-BF16 or AMX).
    """
    if precision is not None:
        return check_choice(Precision, precision, "precision")
    return Precision.BFLOAT16 if torch.device(device).type == "cuda" else Precision.FLOAT32


def inference_context(
    device: torch.device, precision: Precision | str | None = None
) -> contextlib.AbstractContextManager[Any]:
    """The context SAM2 runs in: bfloat16 autocast on ``device``, or float32 with any outer autocast switched off.

    Args:
        device: The model's device.
        precision: None for the device's default (see :func:`effective_precision`).
    """
    if effective_precision(device, precision) is Precision.BFLOAT16:
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return torch.autocast(torch.device(device).type, enabled=False)


def check_image_size(image_size: object, name: str = "image size") -> int:
    """A SAM2 input size: a whole number of pixels, at least 64 and a multiple of 32.

    Raises:
        InvalidInputError: Otherwise; the message names the nearest valid sizes.
    """
    size = check_int(image_size, name, minimum=2 * IMAGE_SIZE_MULTIPLE)
    if size % IMAGE_SIZE_MULTIPLE:
        lower = size // IMAGE_SIZE_MULTIPLE * IMAGE_SIZE_MULTIPLE
        raise InvalidInputError(
            f"{name} must be a multiple of {IMAGE_SIZE_MULTIPLE} (SAM2's image encoder needs it), got {size}; "
            f"use {lower} or {lower + IMAGE_SIZE_MULTIPLE}"
        )
    return size


def small_model_overrides(image_size: int = 128, small_trunk: bool = True) -> list[str]:
    """Hydra overrides that make a SAM2 config tiny and fast, for tests and self-checks (tokens stay 256-d).

    Raises:
        InvalidInputError: ``image_size`` is not a valid SAM2 input size (see :func:`check_image_size`).
    """
    overrides = [f"++model.image_size={check_image_size(image_size)}"]
    if small_trunk:
        overrides += [
            "++model.image_encoder.trunk.embed_dim=32",
            "++model.image_encoder.trunk.stages=[1,1,2,1]",
            # A global-attention block must not open a stage (Hiera would divide by zero).
            "++model.image_encoder.trunk.global_att_blocks=[3]",
            "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
        ]
    return overrides


def load_sam2_checkpoint(model: torch.nn.Module, path: str | Path, model_name: str = "SAM2") -> None:
    """Load official SAM2 weights (a ``{"model": state_dict}`` file) safely and strictly.

    Raises:
        CheckpointError: The file is truncated, not a SAM2 checkpoint, or belongs to another model.
    """
    path = Path(path)
    try:
        # weights_only: checkpoints come from outside; never let their pickle run code.
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated zips and refused pickles
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a weights file ({first_line})") from None
    state = content.get("model") if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a SAM2 checkpoint (no 'model' state dict inside)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        key
        for key in set(own) & set(state)
        if isinstance(state[key], torch.Tensor) and tuple(state[key].shape) != tuple(own[key].shape)
    )
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            details.append(f"{len(mismatched)} keys of another shape (e.g. {mismatched[0]})")
        raise CheckpointError(
            f"checkpoint {path} does not fit {model_name}: {', '.join(details)}; is it the checkpoint of another "
            "SAM2 version or size?"
        )
    model.load_state_dict(state, strict=True)


def build_sam2_model(
    model: str | Path | SAM2ModelSpec | ModelCard,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    random_weights: bool = False,
    checkpoint_dir: str | Path | None = None,
    hydra_overrides: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> torch.nn.Module:
    """Build a released SAM2 model with its official weights (downloaded on first use), or a card's, in eval mode.

    Args:
        model: A model name such as ``sam2.1-tiny`` or its spec, or a model card (:mod:`usam.model_card`) or the
            path of one (``.json``, ``.yaml``, ``.yml``).
        checkpoint: A local checkpoint file; skips the download (not with a card, which names its checkpoint).
        device: Target device; CUDA if available, else CPU.
        random_weights: Skip weights entirely (random, seeded by ``seed``): for tests and self-checks only.
        checkpoint_dir: A folder with official checkpoints under their official names.
        hydra_overrides: Extra Hydra overrides for the config (e.g. :func:`small_model_overrides`), after a card's.
        seed: Seed of the random weights.
        progress: Show a progress bar while downloading.

    Raises:
        InvalidInputError: Unknown model, a bad card, or a config that does not build with the overrides.
        CheckpointError: A checkpoint that is missing, corrupt or does not fit the config.
    """
    from usam.download import resolve_checkpoint

    spec = resolve_model(model)
    card = spec if isinstance(spec, ModelCard) else None
    checkpoint_path = None
    if card is not None:
        if checkpoint is not None:
            raise InvalidInputError(f"model card {card.source or card.name} names its checkpoint; drop --checkpoint")
        hydra_overrides = [*card.hydra_overrides, *hydra_overrides]
        checkpoint_path = None if random_weights else card.checkpoint
    elif not random_weights:
        checkpoint_path = resolve_checkpoint(spec, checkpoint, checkpoint_dir=checkpoint_dir, progress=progress)
    _import_sam2()
    target_device = select_device(device)
    torch.manual_seed(seed)
    sam_model = _build_from_config(spec.config if card is None else card, list(hydra_overrides))
    check_image_size(sam_model.image_size, "the model's image_size (++model.image_size)")
    if checkpoint_path is not None:
        fits = spec.name if card is None else f"the config of model card {card.source or card.name}"
        load_sam2_checkpoint(sam_model, checkpoint_path, fits)
    if card is not None and card.prompting is not None and card.prompting.map_size != low_res_mask_size(sam_model):
        raise InvalidInputError(
            f"model card {card.source or card.name}: its click map is {card.prompting.map_size} px but the model's "
            f"mask input is {low_res_mask_size(sam_model)} px (a quarter of its image size); fix prompting.map_size"
        )
    sam_model = sam_model.to(target_device).eval()
    # Remember which release and weights these are: to flag heads trained for another version, and to name the
    # weights when they produce NaN.
    sam_model.usam_model_name = spec.name  # type: ignore[attr-defined]
    sam_model.usam_sam2_version = spec.version  # type: ignore[attr-defined]
    # How the model must be prompted (a card's click map goes with every prompt, see usam.predictor).
    sam_model.usam_click_map = card.prompting if card is not None else None  # type: ignore[attr-defined]
    # ... and how it got its weights: an extraction records what produced its tokens, and NaN outputs name them.
    sam_model.usam_weights = {  # type: ignore[attr-defined]
        "config": spec.config,
        "hydra_overrides": list(hydra_overrides),
        "checkpoint": None if checkpoint_path is None else str(Path(checkpoint_path).resolve()),
        "random_weights_seed": seed if checkpoint_path is None else None,
    }
    if card is not None:
        sam_model.usam_weights["model_card"] = card.identity()  # type: ignore[attr-defined]
    return sam_model


# Overrides SAM2's build_sam2 applies to every model it builds (its "postprocessing"), for configs read from files.
_SAM2_POSTPROCESSING = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


def _build_from_config(config: str | ModelCard, hydra_overrides: list[str]) -> torch.nn.Module:
    """A SAM2 model with random weights from a package config (via ``build_sam2``) or a card's YAML file."""
    from hydra.errors import HydraException
    from sam2.build_sam import build_sam2

    card = config if isinstance(config, ModelCard) else None
    name = config if card is None else card.config
    where = "" if card is None else f"model card {card.source or card.name}: "
    try:
        if card is None or not card.config_is_file:
            return build_sam2(name, None, device="cpu", hydra_overrides_extra=hydra_overrides)
        return _build_from_yaml_file(card.config_path(), [*hydra_overrides, *_SAM2_POSTPROCESSING])
    except HydraException as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInputError(
            f"{where}SAM2 config {name} does not build with the Hydra overrides {hydra_overrides} ({first_line}); "
            "a package config looks like configs/sam2.1/sam2.1_hiera_t.yaml, an override like ++model.image_size=512"
        ) from None
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, AttributeError, KeyError) as error:
        # The config composed but SAM2's modules refuse its values (e.g. inconsistent trunk and neck sizes).
        raise InvalidInputError(
            f"{where}SAM2 config {name} with the overrides {hydra_overrides} does not make a model "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"
        ) from None


def _build_from_yaml_file(path: Path, hydra_overrides: list[str]) -> torch.nn.Module:
    """Instantiate the ``model`` of a SAM2 config file outside the sam2 package, with ``key=value`` overrides."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.load(path)
        overrides = OmegaConf.from_dotlist([override.lstrip("+") for override in hydra_overrides])
        config = OmegaConf.merge(config, overrides)
        OmegaConf.resolve(config)
    except FileNotFoundError:
        raise InvalidInputError(f"the SAM2 config file {path} does not exist") from None
    except (OmegaConfBaseException, OSError, ValueError) as error:
        raise InvalidInputError(f"cannot read the SAM2 config file {path} ({error})") from None
    if "model" not in config:
        raise InvalidInputError(f"the SAM2 config file {path} has no 'model' section")
    return instantiate(config.model, _recursive_=True).eval()


def make_image_predictor(sam_model: torch.nn.Module, **kwargs: Any) -> Any:
    """A ``SAM2ImagePredictor`` for a model, with backbone feature sizes fixed for its image size."""
    _import_sam2()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(sam_model, **kwargs)
    fit_feature_sizes(predictor)
    return predictor


def fit_feature_sizes(predictor: Any) -> None:
    """Set a ``SAM2ImagePredictor``'s backbone feature sizes for its model's input size.

    The predictor hard-codes those of 1024-pixel inputs; a model of another ``image_size`` needs its own.
    """
    size = int(predictor.model.image_size)
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]


def check_image_predictor(predictor: Any) -> None:
    """Refuse anything that cannot serve as a ``SAM2ImagePredictor`` where usam wraps an image predictor.

    A ``SAM2ImagePredictor`` (or a subclass) is accepted, and so is an object that behaves like one (``set_image``,
    ``predict`` and a SAM2 ``model`` with a mask decoder: a user's wrapper around a predictor). A video predictor,
    which has ``set_image`` neither, or a bare SAM2 model is refused.

    Raises:
        InvalidInputError: Naming the type given and what is expected (e.g. for a ``SAM2VideoPredictor``).
    """
    # Without sam2's predictor module loaded, nothing can be an instance of its class; no need to import it.
    module = sys.modules.get("sam2.sam2_image_predictor")
    expected = getattr(module, "SAM2ImagePredictor", None)
    if expected is not None and isinstance(predictor, expected):
        return
    behaves_like_one = (
        callable(getattr(predictor, "set_image", None))
        and callable(getattr(predictor, "predict", None))
        and hasattr(getattr(predictor, "model", None), "sam_mask_decoder")
        and not hasattr(predictor, "propagate_in_video")
    )
    if not behaves_like_one:
        given = f"{type(predictor).__module__}.{type(predictor).__qualname__}"
        raise InvalidInputError(
            f"UncertainSAM wraps a sam2.sam2_image_predictor.SAM2ImagePredictor, got a {given}; build one with "
            "usam.sam2_adapter.make_image_predictor(sam2_model) or SAM2ImagePredictor(sam2_model)"
        )


def image_size_of(predictor: Any) -> tuple[int, int] | None:
    """(H, W) of the image a ``SAM2ImagePredictor`` holds, or None when it holds none (asked, never cached)."""
    if not getattr(predictor, "_is_image_set", False):
        return None
    sizes = getattr(predictor, "_orig_hw", None)
    if not sizes:
        return None
    height, width = sizes[-1]
    return int(height), int(width)


def describe_model(predictor: Any) -> str:
    """A predictor's model in words, for messages: release name and weights when usam built it."""
    model = getattr(predictor, "model", predictor)
    name = getattr(model, "usam_model_name", None)
    if name is None:
        return f"the SAM2 model ({type(model).__name__})"
    weights = weights_record_of(model)
    if weights is None:
        return f"SAM2 model {name}"
    if weights["checkpoint"] is not None:
        return f"SAM2 model {name} (checkpoint {weights['checkpoint']})"
    return f"SAM2 model {name} (random weights, seed {weights['random_weights_seed']})"


def mask_decoder_of(predictor: Any) -> torch.nn.Module:
    """The mask decoder of a ``SAM2ImagePredictor`` (or of a SAM2 model)."""
    model = getattr(predictor, "model", predictor)
    decoder = getattr(model, "sam_mask_decoder", None)
    if decoder is None or not hasattr(decoder, "iou_prediction_head"):
        raise UsamError(f"{type(predictor).__name__} is not a SAM2 image predictor (no sam_mask_decoder found)")
    return decoder


def token_dim_of(predictor: Any) -> int:
    """Size of the decoder tokens (256 for every released SAM2)."""
    return int(mask_decoder_of(predictor).transformer_dim)


def num_mask_tokens_of(predictor: Any) -> int:
    """Mask tokens of the decoder: the single-mask token plus the multimask ones (4 for every released SAM2)."""
    return int(mask_decoder_of(predictor).num_mask_tokens)


def weights_record_of(predictor: Any) -> dict[str, Any] | None:
    """How a model built by :func:`build_sam2_model` got its weights, else None.

    Returns:
        ``{"config", "hydra_overrides", "checkpoint", "random_weights_seed"}``: the config name, the extra Hydra
        overrides, the checkpoint file loaded (None for random weights) and the seed of random weights (None
        when a checkpoint was loaded).
    """
    record = getattr(getattr(predictor, "model", predictor), "usam_weights", None)
    return dict(record) if record is not None else None


def model_name_of(predictor: Any) -> str | None:
    """The release name of a model built by :func:`build_sam2_model`, else None."""
    return getattr(getattr(predictor, "model", predictor), "usam_model_name", None)


def sam2_version_of(predictor: Any) -> str | None:
    """The release (``sam2``/``sam2.1``) a model built by :func:`build_sam2_model` is or derives from, else None."""
    return getattr(getattr(predictor, "model", predictor), "usam_sam2_version", None)


def click_map_prompting_of(predictor: Any) -> ClickMapPrompting | None:
    """The click map a card's model needs with every prompt (see :mod:`usam.model_card`), else None."""
    return getattr(getattr(predictor, "model", predictor), "usam_click_map", None)


def low_res_mask_size(predictor: Any) -> int:
    """Side of the low-resolution mask logits (256 for 1024-pixel models)."""
    return int(getattr(predictor, "model", predictor).image_size) // 4


@dataclasses.dataclass
class DecoderCall:
    """What one mask-decoder call computed, as captured by the hooks.

    Attributes:
        iou_token: (B, C) IoU tokens.
        mask_tokens: (B, 4, C) mask tokens.
        mask_token_index: (B, M) the mask token that produced each returned mask (M = 3 or 1).
        token_sam_scores: (B, 4) the predicted IoU of every token's mask (the IoU prediction head's whole output;
            SAM2 returns only the selected ones), or None unless the capture was asked for signals.
        object_score_logits: (B, 1) the object-score logits, or None unless asked for signals.
        token_logits: (B, 4, h, w) the low-resolution logits of every token's mask, computed exactly as SAM2's
            ``predict_masks`` computes them (so the returned masks' logits are among them), or None unless asked
            for signals.
    """

    iou_token: torch.Tensor
    mask_tokens: torch.Tensor
    mask_token_index: torch.Tensor
    token_sam_scores: torch.Tensor | None = None
    object_score_logits: torch.Tensor | None = None
    token_logits: torch.Tensor | None = None


class DecoderTokenCapture:
    """Capture the IoU and mask tokens of every SAM2 mask-decoder call, with hooks that live only inside ``with``.

    Example:
        >>> with DecoderTokenCapture(predictor) as capture:  # doctest: +SKIP
        ...     predictor.predict(point_coords=..., point_labels=...)
        >>> call = capture.single_call()  # doctest: +SKIP
    """

    def __init__(self, predictor: Any, *, multimask_output: bool | None = None, signals: bool = False) -> None:
        """Prepare hooks on the predictor's mask decoder (registered on ``__enter__``).

        Args:
            predictor: A ``SAM2ImagePredictor`` or a SAM2 model.
            multimask_output: What every decoder call inside the block asks for, if the caller knows it. ``True``
                needs a single hook (on the two-way transformer, whose output holds all tokens): the cheapest
                capture, for the prediction hot path. ``None`` (calls of either kind) and ``False`` also hook what
                it takes to tell which token produced a single returned mask (SAM2's dynamic fallback).
            signals: Also capture what SAM2's scalar signals need (:attr:`DecoderCall.token_sam_scores`,
                ``object_score_logits``, ``token_logits``): the decoder computes all four tokens' masks and scores
                in every call, and the hooks see them, so no extra decoder call is needed.
        """
        self.decoder = mask_decoder_of(predictor)
        self.multimask_only = multimask_output is True and not signals
        self.signals = signals
        self.calls: list[DecoderCall] = []
        self._handles: list[Any] = []
        self._iou_token: torch.Tensor | None = None
        self._token_scores: torch.Tensor | None = None
        self._mask_tokens: dict[int, torch.Tensor] = {}
        self._hyper_inputs: dict[int, torch.Tensor] = {}
        self._upscaled: torch.Tensor | None = None
        self._multimask_output: bool | None = None

    def __enter__(self) -> DecoderTokenCapture:
        decoder = self.decoder
        self.calls = []
        if self.multimask_only:
            self._handles = [decoder.transformer.register_forward_hook(self._on_transformer)]
            return self
        self._handles = [
            decoder.register_forward_pre_hook(self._on_decoder_start, with_kwargs=True),
            decoder.iou_prediction_head.register_forward_hook(self._on_iou_head),
            decoder.register_forward_hook(self._on_decoder_end, with_kwargs=True),
        ]
        for index, hypernetwork in enumerate(decoder.output_hypernetworks_mlps):
            self._handles.append(hypernetwork.register_forward_pre_hook(self._mask_token_hook(index)))
            self._handles.append(hypernetwork.register_forward_hook(self._hyper_output_hook(index)))
        # The last module of output_upscaling emits the upscaled embedding in both of predict_masks' code paths.
        self._handles.append(decoder.output_upscaling[-1].register_forward_hook(self._on_upscaled))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._iou_token = None
        self._token_scores = None
        self._mask_tokens = {}
        self._hyper_inputs = {}
        self._upscaled = None
        self._multimask_output = None

    def _on_decoder_start(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._reset_pending()
        multimask = kwargs.get("multimask_output", args[4] if len(args) > 4 else None)
        self._multimask_output = bool(multimask)

    def _on_transformer(self, module: torch.nn.Module, args: tuple, output: tuple) -> None:
        # predict_masks reads its output tokens from hs exactly like this (after the object-score token, if any).
        hidden_states = output[0].detach()
        first = 1 if self.decoder.pred_obj_scores else 0
        mask_tokens = hidden_states[:, first + 1 : first + 1 + NUM_MASK_TOKENS]
        if mask_tokens.shape[1] != NUM_MASK_TOKENS:
            raise UsamError("could not capture the decoder tokens: the decoder has fewer than four mask tokens")
        token_index = torch.arange(1, NUM_MASK_TOKENS, device=hidden_states.device).expand(len(hidden_states), -1)
        self.calls.append(DecoderCall(hidden_states[:, first], mask_tokens, token_index))

    def _on_iou_head(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._iou_token = args[0].detach()
        self._token_scores = output.detach()

    def _mask_token_hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            self._mask_tokens[index] = args[0].detach()

        return hook

    def _hyper_output_hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._hyper_inputs[index] = output.detach()

        return hook

    def _on_upscaled(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._upscaled = output.detach()

    def _on_decoder_end(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        if self._iou_token is None or len(self._mask_tokens) != NUM_MASK_TOKENS:
            raise UsamError(
                "could not capture the decoder tokens: this SAM2 mask decoder is not laid out as usam expects "
                "(iou_prediction_head and four output_hypernetworks_mlps)"
            )
        mask_tokens = torch.stack([self._mask_tokens[index] for index in range(NUM_MASK_TOKENS)], dim=1)
        returned_masks = output[0]
        batch = returned_masks.shape[0]
        device = returned_masks.device
        dynamic_fallback = (
            not self._multimask_output and self.decoder.dynamic_multimask_via_stability and not self.decoder.training
        )
        token_logits = self._token_logits() if self.signals or dynamic_fallback else None
        if self._multimask_output:
            token_index = torch.arange(1, NUM_MASK_TOKENS, device=device).expand(batch, -1)
        elif dynamic_fallback:
            # With one output mask SAM2 may swap in one of tokens 1..3 when token 0's mask is unstable: the
            # producing token is the one whose mask equals the returned mask.
            distance = (token_logits.float() - returned_masks.float()).abs().amax(dim=(-2, -1))
            token_index = distance.argmin(dim=1, keepdim=True)
        else:
            token_index = torch.zeros(batch, 1, dtype=torch.long, device=device)
        call = DecoderCall(self._iou_token, mask_tokens, token_index.long())
        if self.signals:
            # SAM2's forward returns (masks, iou_pred, sam_tokens_out, object_score_logits).
            call.token_sam_scores = self._token_scores
            call.object_score_logits = output[3].detach()
            call.token_logits = token_logits
        self.calls.append(call)
        self._reset_pending()

    def _token_logits(self) -> torch.Tensor:
        """Every token's low-resolution mask logits, (B, 4, h, w), with predict_masks' own operation and shapes."""
        hyper_in = torch.stack([self._hyper_inputs[index] for index in range(NUM_MASK_TOKENS)], dim=1)
        upscaled = self._upscaled
        batch, channels, height, width = upscaled.shape
        return (hyper_in @ upscaled.view(batch, channels, height * width)).view(batch, -1, height, width)

    def single_call(self) -> DecoderCall:
        """The one decoder call of a predictor's ``predict``; an error if there was not exactly one."""
        if len(self.calls) != 1:
            raise UsamError(f"expected one mask-decoder call, captured {len(self.calls)}")
        return self.calls[0]


def iter_hooks(module: torch.nn.Module) -> Iterator[tuple[str, int]]:
    """(module name, number of hooks) of every submodule that has forward hooks: to verify nothing is left."""
    for name, submodule in module.named_modules():
        count = len(submodule._forward_hooks) + len(submodule._forward_pre_hooks)
        if count:
            yield name, count
