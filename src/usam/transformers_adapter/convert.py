"""Meta's SAM2 as a transformers ``Sam2Model``: the config and the weights, from a built SAM2 model.

transformers' wheel does not ship its conversion script (``convert_sam2_to_hf.py`` lives only in its repository, and
it knows only the released sizes). This module derives the transformers config from the SAM2 model itself, so any
SAM2 image model converts (the small random-weight models of usam's tests, a test-bed model, a released size), and
renames the weights by the same rules as that script (Meta's ``sam_mask_decoder.iou_prediction_head.layers.0`` is
transformers' ``mask_decoder.iou_prediction_head.proj_in``, ...). Loading is strict: a key left over or missing on
either side is an error, so a rule that no longer fits a future transformers shows at once.

Only the image model (encoder, prompt encoder, mask decoder) is converted; the video memory modules are not.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from usam.errors import CheckpointError
from usam.transformers_adapter.imports import import_transformers

# (pattern, replacement) applied in order to each of Meta's keys. Meta's MLPs number their linear layers
# layers.0..layers.{n-1}; transformers' name the first proj_in, the last proj_out and the middle ones layers.0...
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.norm(\d+|_final_attn)?\.", r".layer_norm\1."),
    (r"\.out_proj\.", ".o_proj."),
    (r"\.pe_layer\.positional_encoding_gaussian_matrix$", ".shared_embedding.positional_embedding"),
    (r"\.mask_downscaling\.0\.", ".mask_embed.conv1."),
    (r"\.mask_downscaling\.1\.", ".mask_embed.layer_norm1."),
    (r"\.mask_downscaling\.3\.", ".mask_embed.conv2."),
    (r"\.mask_downscaling\.4\.", ".mask_embed.layer_norm2."),
    (r"\.mask_downscaling\.6\.", ".mask_embed.conv3."),
    (r"\.output_upscaling\.0\.", ".upscale_conv1."),
    (r"\.output_upscaling\.1\.", ".upscale_layer_norm."),
    (r"\.output_upscaling\.3\.", ".upscale_conv2."),
)
# Three-layer MLPs of the decoder (hypernetworks, IoU head, object-score head) and two-layer ones (Hiera blocks,
# two-way transformer blocks), with transformers' names of their linear layers.
_THREE_LAYER_MLP = re.compile(
    r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.(\d)\."
)
_THREE_LAYER_NAMES = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}
_TWO_LAYER_MLP = re.compile(r"(\.mlp)\.layers\.(\d)\.")
_TWO_LAYER_NAMES = {"0": "proj_in", "1": "proj_out"}
# What a SAM2 image model holds that the transformers image model has no place for (video memory, the image
# normalisation constants, which the processor holds).
_VIDEO_ONLY = re.compile(
    r"^(memory_attention|memory_encoder|maskmem_tpos_enc|no_mem_pos_enc|no_obj_ptr|obj_ptr_proj|obj_ptr_tpos_proj|"
    r"mask_downsample|no_obj_embed_spatial|pixel_mean|pixel_std)"
)


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    key = _THREE_LAYER_MLP.sub(lambda match: f"{match.group(1)}.{_THREE_LAYER_NAMES[match.group(2)]}.", key)
    return _TWO_LAYER_MLP.sub(lambda match: f"{match.group(1)}.{_TWO_LAYER_NAMES[match.group(2)]}.", key)


def convert_sam2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's SAM2 weights under transformers' ``Sam2Model`` names (video memory weights are left out).

    Example:
        >>> import torch
        >>> sorted(convert_sam2_state_dict({"sam_mask_decoder.iou_prediction_head.layers.2.bias": torch.zeros(4)}))
        ['mask_decoder.iou_prediction_head.proj_out.bias']
    """
    converted: dict[str, torch.Tensor] = {}
    point_embeddings: dict[int, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _VIDEO_ONLY.match(key):
            continue
        match = re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight", key)
        if match:
            point_embeddings[int(match.group(1))] = value
            continue
        converted[_rename(key)] = value
    if point_embeddings:
        # Meta keeps one embedding module per point label; transformers one table.
        converted["prompt_encoder.point_embed.weight"] = torch.cat(
            [point_embeddings[index] for index in sorted(point_embeddings)], dim=0
        )
    positional = converted.get("prompt_encoder.shared_embedding.positional_embedding")
    if positional is not None:
        # transformers keeps the prompt encoder's random Fourier matrix a second time, for the image-wide encoding.
        converted["shared_image_embedding.positional_embedding"] = positional
    return converted


def sam2_config_from_model(sam_model: torch.nn.Module) -> Any:
    """The transformers ``Sam2Config`` of a SAM2 image model (Meta's ``SAM2Base``), read from its modules.

    Raises:
        CheckpointError: The model is not laid out like a SAM2 (Hiera trunk, FPN neck, SAM decoder).
    """
    transformers = import_transformers()
    try:
        trunk = sam_model.image_encoder.trunk
        neck = sam_model.image_encoder.neck
        decoder = sam_model.sam_mask_decoder
        stage_ends = list(trunk.stage_ends)
        blocks = list(trunk.blocks)
        blocks_per_stage = [end - start for start, end in zip([-1, *stage_ends[:-1]], stage_ends, strict=True)]
        patch = trunk.patch_embed.proj
        image_size = int(sam_model.image_size)
        backbone = {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": int(patch.out_channels),
            "num_attention_heads": int(blocks[0].attn.num_heads),
            "image_size": [image_size, image_size],
            "patch_kernel_size": list(patch.kernel_size),
            "patch_stride": list(patch.stride),
            "patch_padding": list(patch.padding),
            "query_stride": list(trunk.q_stride),
            "window_positional_embedding_background_size": list(trunk.window_pos_embed_bkg_spatial_size),
            "num_query_pool_stages": len(trunk.q_pool_blocks),
            "blocks_per_stage": blocks_per_stage,
            "embed_dim_per_stage": [int(blocks[end].dim_out) for end in stage_ends],
            "num_attention_heads_per_stage": [int(blocks[end].attn.num_heads) for end in stage_ends],
            "window_size_per_stage": list(trunk.window_spec),
            "global_attention_blocks": list(trunk.global_att_blocks),
        }
        strides = [4 * 2**level for level in range(3)]
        vision = {
            "backbone_config": backbone,
            "backbone_channel_list": list(neck.backbone_channel_list),
            "backbone_feature_sizes": [[image_size // stride, image_size // stride] for stride in strides],
            "fpn_hidden_size": int(neck.d_model),
            "fpn_top_down_levels": list(neck.fpn_top_down_levels),
        }
        transformer = decoder.transformer
        prompt = {
            "hidden_size": int(sam_model.sam_prompt_encoder.embed_dim),
            "image_size": image_size,
            "patch_size": image_size // int(sam_model.sam_prompt_encoder.image_embedding_size[0]),
        }
        mask_decoder = {
            "hidden_size": int(decoder.transformer_dim),
            "mlp_dim": int(transformer.layers[0].mlp.layers[0].out_features),
            "num_hidden_layers": len(transformer.layers),
            "num_attention_heads": int(transformer.layers[0].self_attn.num_heads),
            "num_multimask_outputs": int(decoder.num_multimask_outputs),
            "iou_head_depth": int(decoder.iou_prediction_head.num_layers),
            "iou_head_hidden_dim": int(decoder.iou_prediction_head.layers[0].out_features),
            "dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
            "dynamic_multimask_stability_delta": float(decoder.dynamic_multimask_stability_delta),
            "dynamic_multimask_stability_thresh": float(decoder.dynamic_multimask_stability_thresh),
        }
    except (AttributeError, IndexError, TypeError) as error:
        raise CheckpointError(
            f"cannot read a transformers config from this {type(sam_model).__name__}: it is not laid out like a "
            f"SAM2 model ({error})"
        ) from None
    return transformers.Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=mask_decoder)


def sam2_to_transformers(sam_model: torch.nn.Module) -> Any:
    """A transformers ``Sam2Model`` (eval mode, CPU) with the weights of a Meta SAM2 image model.

    Raises:
        CheckpointError: The weights do not fit the derived config (a key missing or left over, another shape).
    """
    transformers = import_transformers()
    model = transformers.Sam2Model(sam2_config_from_model(sam_model))
    state = convert_sam2_state_dict({key: value.detach().cpu() for key, value in sam_model.state_dict().items()})
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(key for key in set(own) & set(state) if own[key].shape != state[key].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"the SAM2 weights do not fit transformers' Sam2Model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shape {mismatched[:3]}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
