"""Capture the IoU and mask tokens of transformers' SAM2-style mask decoders, with hooks that live only in ``with``.

transformers' ``Sam2Model``, ``Sam2VideoModel``, ``EdgeTamModel``, ``Sam3TrackerModel`` (and their video variants)
share Meta's decoder layout under Meta's module names: the IoU token is the input of
``mask_decoder.iou_prediction_head``, mask token i the input of ``mask_decoder.output_hypernetworks_mlps[i]``.
Their tokens carry an extra point-batch axis, (batch, point_batch, 256); a captured call is flattened to usam's
(batch * point_batch, ...) layout, image-major, the order in which transformers' decoder lays out its masks.
"""

from __future__ import annotations

from typing import Any

import torch

from usam.errors import UsamError
from usam.sam2_adapter import NUM_MASK_TOKENS, DecoderCall


def mask_decoder_of(model: Any) -> torch.nn.Module:
    """The SAM2-style mask decoder of a transformers model, or of a predictor holding one in ``.model``.

    Raises:
        UsamError: No ``mask_decoder`` with an ``iou_prediction_head`` and four ``output_hypernetworks_mlps``.
    """
    model = getattr(model, "model", model)
    decoder = getattr(model, "mask_decoder", None)
    hypernetworks = getattr(decoder, "output_hypernetworks_mlps", None)
    if decoder is None or not hasattr(decoder, "iou_prediction_head") or hypernetworks is None:
        raise UsamError(
            f"{type(model).__name__} has no SAM2-style mask decoder (mask_decoder.iou_prediction_head and "
            "mask_decoder.output_hypernetworks_mlps); usam supports Sam2Model, Sam2VideoModel, EdgeTamModel, "
            "Sam3TrackerModel and their video variants"
        )
    if len(hypernetworks) != NUM_MASK_TOKENS:
        raise UsamError(f"the mask decoder has {len(hypernetworks)} mask tokens; usam's heads need {NUM_MASK_TOKENS}")
    return decoder


class TransformersTokenCapture:
    """Capture the tokens of every mask-decoder call of a transformers SAM2-style model inside a ``with`` block.

    Per decoder call, ``calls`` holds the tokens (a :class:`usam.sam2_adapter.DecoderCall` in usam's layout),
    ``point_batch_sizes`` transformers' point-batch size and ``scores`` the (rows, M) scores the decoder returned.

    Example:
        >>> with TransformersTokenCapture(model) as capture:  # doctest: +SKIP
        ...     model(**inputs)
        >>> call = capture.single_call()  # doctest: +SKIP
    """

    def __init__(self, model: Any) -> None:
        """Prepare hooks on the model's mask decoder (registered on ``__enter__``, removed on ``__exit__``).

        Args:
            model: A transformers ``Sam2Model`` (or video, EdgeTAM, SAM3-tracker model), or a predictor holding one.
        """
        self.decoder = mask_decoder_of(model)
        self.calls: list[DecoderCall] = []
        self.point_batch_sizes: list[int] = []
        self.scores: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._reset_pending()

    def __enter__(self) -> TransformersTokenCapture:
        decoder = self.decoder
        self.calls = []
        self.point_batch_sizes = []
        self.scores = []
        self._handles = [
            decoder.register_forward_pre_hook(self._on_decoder_start, with_kwargs=True),
            decoder.iou_prediction_head.register_forward_pre_hook(self._on_iou_head),
            decoder.register_forward_hook(self._on_decoder_end, with_kwargs=True),
        ]
        for index, hypernetwork in enumerate(decoder.output_hypernetworks_mlps):
            self._handles.append(hypernetwork.register_forward_pre_hook(self._input_hook(index)))
            self._handles.append(hypernetwork.register_forward_hook(self._output_hook(index)))
        # The decoder's own activation module ends the mask upscaling; its last call emits the upscaled embedding.
        activation = getattr(decoder, "activation", None)
        if isinstance(activation, torch.nn.Module):
            self._handles.append(activation.register_forward_hook(self._on_activation))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._iou_token: torch.Tensor | None = None
        self._mask_tokens: dict[int, torch.Tensor] = {}
        self._hyper_outputs: dict[int, torch.Tensor] = {}
        self._upscaled: torch.Tensor | None = None
        self._multimask_output: bool | None = None

    def _on_decoder_start(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._reset_pending()
        self._multimask_output = bool(kwargs.get("multimask_output", args[4] if len(args) > 4 else True))

    def _on_iou_head(self, module: torch.nn.Module, args: tuple) -> None:
        self._iou_token = args[0].detach()

    def _input_hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            self._mask_tokens[index] = args[0].detach()

        return hook

    def _output_hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._hyper_outputs[index] = output.detach()

        return hook

    def _on_activation(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._upscaled = output.detach()

    def _on_decoder_end(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        if self._iou_token is None or len(self._mask_tokens) != NUM_MASK_TOKENS:
            raise UsamError(
                "could not capture the decoder tokens: this mask decoder is not laid out as usam expects "
                "(iou_prediction_head and four output_hypernetworks_mlps)"
            )
        iou_token = self._iou_token  # (B, P, D)
        batch, point_batch, dim = iou_token.shape
        mask_tokens = torch.stack([self._mask_tokens[index] for index in range(NUM_MASK_TOKENS)], dim=2)
        returned_masks = output[0]  # (B, P, M, h, w)
        device = returned_masks.device
        if self._multimask_output:
            token_index = torch.arange(1, NUM_MASK_TOKENS, device=device).expand(batch * point_batch, -1)
        elif module.dynamic_multimask_via_stability and not module.training:
            token_index = self._producing_tokens(returned_masks.flatten(0, 1))
        else:
            token_index = torch.zeros(batch * point_batch, 1, dtype=torch.long, device=device)
        self.calls.append(
            DecoderCall(iou_token.reshape(-1, dim), mask_tokens.reshape(-1, NUM_MASK_TOKENS, dim), token_index.long())
        )
        self.point_batch_sizes.append(point_batch)
        self.scores.append(output[1].detach().reshape(batch * point_batch, -1))
        self._reset_pending()

    def _producing_tokens(self, returned_masks: torch.Tensor) -> torch.Tensor:
        # With one output mask the decoder may swap in one of tokens 1..3 when token 0's mask is unstable. Recompute
        # each token's mask as the decoder does and pick the one that equals the returned mask.
        if self._upscaled is None or len(self._hyper_outputs) != NUM_MASK_TOKENS:
            raise UsamError("could not tell which mask token produced the single mask: the decoder's upscaling differs")
        hyper_in = torch.stack([self._hyper_outputs[index] for index in range(NUM_MASK_TOKENS)], dim=2).flatten(0, 1)
        upscaled = self._upscaled
        rows, channels, height, width = upscaled.shape
        candidates = (hyper_in @ upscaled.view(rows, channels, height * width)).view(rows, -1, height, width)
        distance = (candidates.float() - returned_masks.float()).abs().amax(dim=(-2, -1))
        return distance.argmin(dim=1, keepdim=True)

    def single_call(self) -> DecoderCall:
        """The one decoder call of an image prediction; an error if there was not exactly one."""
        if len(self.calls) != 1:
            raise UsamError(f"expected one mask-decoder call, captured {len(self.calls)}")
        return self.calls[0]
