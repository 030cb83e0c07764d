"""Meta's SAM2 as a transformers ``Sam2Model`` or ``Sam2VideoModel``: the config and the weights, from a built model.

transformers' wheel does not ship its conversion script (``convert_sam2_to_hf.py`` lives only in its repository, and
it knows only the released sizes). This module derives the transformers config from the SAM2 model itself, so any
SAM2 model converts (the small random-weight models of usam's tests, a test-bed model, a released size), and renames
the weights by one table of rules (Meta's ``sam_mask_decoder.iou_prediction_head.layers.0`` is transformers'
``mask_decoder.iou_prediction_head.proj_in``, ``memory_encoder.fuser.layers.0.gamma`` is
``memory_encoder.memory_fuser.layers.0.scale``, ...). Loading is strict: a key left over or missing on either side is
an error, so a rule that no longer fits a future transformers shows at once.

:func:`sam2_to_transformers` converts the image model (encoder, prompt encoder, mask decoder);
:func:`sam2_video_to_transformers` also the video memory (memory attention, memory encoder, object pointers).

transformers' ``Sam2VideoModel`` fixes some of the settings that Meta's SAM2 reads from its config; a SAM2 whose
settings differ converts, with a :class:`usam.UsamWarning` that names each difference (see
:func:`video_setting_differences`):

- hole filling (``fill_hole_area``): transformers has none; ``build_sam2_video_predictor`` asks for 8 pixels (it needs
  the compiled ``sam2._C``), usam's :func:`usam.sam2_adapter.video.build_video_predictor` for 0.
- non-overlapping masks (``non_overlap_masks``, ``non_overlap_masks_for_mem_enc``): off in transformers (its processor
  applies the constraint only to the masks it post-processes, on request).
- memory of prompted frames (``binarize_mask_from_pts_for_mem_enc``): transformers always binarizes the mask of a
  prompted frame before encoding it (SAM2's video predictor does; a SAM2 image model built without the video
  overrides does not). transformers encodes the memories of all objects decoded on a frame in one batch and
  binarizes all of them when any of them was prompted; SAM2 decides per object, so a frame where one object is
  prompted while another is tracked differs (not the case when prompts come before propagation).
- the memory frames (``memory_temporal_stride_for_eval``): transformers takes the last ``num_maskmem - 1`` frames
  (stride 1).
- corrections (``add_all_frames_to_correct_as_cond``, ``clear_non_cond_mem_around_input``): transformers does
  neither.
- object pointers: transformers uses only past conditioning frames' pointers (``only_obj_ptrs_in_the_past_for_eval``),
  signed temporal distances projected from the full width (``use_signed_tpos_enc_to_obj_ptrs``,
  ``proj_tpos_enc_in_obj_ptrs``), and the best of three output tokens (``use_multimask_token_for_obj_ptr``).
- a frame without memory (``directly_add_no_mem_embed``): transformers adds ``no_memory_embedding``.
- the memory attention's positional encodings (added to the input at 0.1, to the cross-attention keys only) and the
  memory encoder's sine encoding (normalized, temperature 10000).

With the released SAM2.1 configs and ``fill_hole_area=0`` there is no difference. Both implementations keep the
memory features in bfloat16 (SAM2's video predictor and transformers alike), so results agree to float tolerance
only as long as no rounding to bfloat16 falls differently.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch

from usam.errors import CheckpointError, UsamWarning
from usam.transformers_adapter.imports import import_transformers

# (pattern, replacement) applied in order to each of Meta's keys. Meta's MLPs number their linear layers
# layers.0..layers.{n-1}; transformers' name the first proj_in, the last proj_out and the middle ones layers.0...
_RENAMES: tuple[tuple[str, str], ...] = (
    # Video memory (before the general rules: memory_encoder.out_proj is not an attention's out_proj).
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.gamma$", r"memory_encoder.memory_fuser.layers.\1.scale"),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.dwconv\.", r"memory_encoder.memory_fuser.layers.\1.depthwise_conv."),
    (
        r"^memory_encoder\.fuser\.layers\.(\d+)\.pwconv(\d)\.",
        r"memory_encoder.memory_fuser.layers.\1.pointwise_conv\2.",
    ),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    # Image model.
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
    r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head|object_pointer_proj)\.layers\.(\d)\."
)
_THREE_LAYER_NAMES = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}
_TWO_LAYER_MLP = re.compile(r"(\.mlp)\.layers\.(\d)\.")
_TWO_LAYER_NAMES = {"0": "proj_in", "1": "proj_out"}
# Meta's mask downsampler is one Sequential of (conv, LayerNorm2d, GELU) triples and a final 1x1 conv;
# transformers' names each triple layers.i (conv, layer_norm) and the last conv final_conv.
_MASK_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.")
# What a SAM2 model holds that the transformers image model has no place for (the video memory).
_VIDEO_ONLY = re.compile(
    r"^(memory_attention|memory_encoder|maskmem_tpos_enc|no_mem_pos_enc|no_obj_ptr|obj_ptr_proj|obj_ptr_tpos_proj|"
    r"mask_downsample|no_obj_embed_spatial)"
)
# Neither transformers model has a place for the image normalisation constants (its processor holds them).
_NEVER_CONVERTED = re.compile(r"^(pixel_mean|pixel_std)$")


def _rename(key: str, final_downsampler_index: int) -> str:
    match = _MASK_DOWNSAMPLER.match(key)
    if match:
        index = int(match.group(1))
        if index == final_downsampler_index:
            name = "final_conv"
        else:
            name = f"layers.{index // 3}." + ("conv" if index % 3 == 0 else "layer_norm")
        key = f"memory_encoder.mask_downsampler.{name}.{key[match.end() :]}"
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    key = _THREE_LAYER_MLP.sub(lambda match: f"{match.group(1)}.{_THREE_LAYER_NAMES[match.group(2)]}.", key)
    return _TWO_LAYER_MLP.sub(lambda match: f"{match.group(1)}.{_TWO_LAYER_NAMES[match.group(2)]}.", key)


def convert_sam2_state_dict(state_dict: dict[str, torch.Tensor], video: bool = False) -> dict[str, torch.Tensor]:
    """Meta's SAM2 weights under transformers' names: ``Sam2Model``'s, or with ``video`` ``Sam2VideoModel``'s.

    Without ``video`` the video memory weights are left out.

    Example:
        >>> import torch
        >>> sorted(convert_sam2_state_dict({"sam_mask_decoder.iou_prediction_head.layers.2.bias": torch.zeros(4)}))
        ['mask_decoder.iou_prediction_head.proj_out.bias']
        >>> sorted(convert_sam2_state_dict({"memory_encoder.fuser.layers.1.gamma": torch.zeros(4)}, video=True))
        ['memory_encoder.memory_fuser.layers.1.scale']
    """
    downsampler_indices = [int(match.group(1)) for match in map(_MASK_DOWNSAMPLER.match, state_dict) if match]
    final_downsampler_index = max(downsampler_indices, default=-1)
    converted: dict[str, torch.Tensor] = {}
    point_embeddings: dict[int, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _NEVER_CONVERTED.match(key) or (not video and _VIDEO_ONLY.match(key)):
            continue
        match = re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight", key)
        if match:
            point_embeddings[int(match.group(1))] = value
            continue
        converted[_rename(key, final_downsampler_index)] = value
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


def _image_sub_configs(sam_model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The vision, prompt-encoder and mask-decoder configs (as dicts) of a SAM2 model, read from its modules."""
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
    return {"vision_config": vision, "prompt_encoder_config": prompt, "mask_decoder_config": mask_decoder}


def _memory_settings(sam_model: torch.nn.Module) -> dict[str, Any]:
    """The ``Sam2VideoConfig`` fields of a SAM2 model's video memory (memory attention and encoder, pointers)."""
    layer = sam_model.memory_attention.layers[0]
    attention = layer.self_attn
    encoder = sam_model.memory_encoder
    downsampler_convs = [module for module in encoder.mask_downsampler.encoder if isinstance(module, torch.nn.Conv2d)]
    first_conv = downsampler_convs[0]
    fuser_block = encoder.fuser.layers[0]
    feature_size = int(sam_model.image_size) // int(sam_model.backbone_stride)
    num_downsampling_convs = len(downsampler_convs) - 1  # the last one is the final 1x1 projection
    return {
        "image_size": int(sam_model.image_size),
        "num_maskmem": int(sam_model.num_maskmem),
        "sigmoid_scale_for_mem_enc": float(sam_model.sigmoid_scale_for_mem_enc),
        "sigmoid_bias_for_mem_enc": float(sam_model.sigmoid_bias_for_mem_enc),
        "enable_occlusion_spatial_embedding": sam_model.no_obj_embed_spatial is not None,
        "multimask_output_in_sam": bool(sam_model.multimask_output_in_sam),
        "multimask_min_pt_num": int(sam_model.multimask_min_pt_num),
        "multimask_max_pt_num": int(sam_model.multimask_max_pt_num),
        "multimask_output_for_tracking": bool(sam_model.multimask_output_for_tracking),
        "max_object_pointers_in_encoder": int(sam_model.max_obj_ptrs_in_encoder),
        "max_cond_frame_num": int(sam_model.max_cond_frames_in_attn),
        "enable_temporal_pos_encoding_for_object_pointers": bool(sam_model.add_tpos_enc_to_obj_ptrs),
        "memory_attention_hidden_size": int(sam_model.memory_attention.d_model),
        "memory_attention_num_layers": len(sam_model.memory_attention.layers),
        "memory_attention_num_attention_heads": int(attention.num_heads),
        "memory_attention_downsample_rate": int(attention.embedding_dim // attention.internal_dim),
        "memory_attention_feed_forward_hidden_size": int(layer.dim_feedforward),
        "memory_attention_feed_forward_hidden_act": str(layer.activation_str),
        "memory_attention_dropout": float(layer.dropout_value),
        # SAM2 recomputes its rotary table for the feature map it sees; transformers' is fixed by this size.
        "memory_attention_rope_feat_sizes": [feature_size, feature_size],
        "memory_attention_rope_dropout": float(attention.dropout_p),
        "rope_parameters": {"rope_type": "axial", "rope_theta": float(attention.compute_cis.keywords["theta"])},
        "memory_encoder_hidden_size": int(encoder.pix_feat_proj.in_channels),
        "memory_encoder_output_channels": int(sam_model.mem_dim),
        "mask_downsampler_embed_dim": int(downsampler_convs[-1].out_channels),
        "mask_downsampler_kernel_size": int(first_conv.kernel_size[0]),
        "mask_downsampler_stride": int(first_conv.stride[0]),
        "mask_downsampler_padding": int(first_conv.padding[0]),
        "mask_downsampler_total_stride": int(first_conv.stride[0]) ** num_downsampling_convs,
        "memory_fuser_num_layers": len(encoder.fuser.layers),
        "memory_fuser_embed_dim": int(fuser_block.dwconv.in_channels),
        "memory_fuser_intermediate_dim": int(fuser_block.pwconv1.out_features),
        "memory_fuser_kernel_size": int(fuser_block.dwconv.kernel_size[0]),
        "memory_fuser_padding": int(fuser_block.dwconv.padding[0]),
    }


def _not_sam2(sam_model: torch.nn.Module, error: Exception, what: str) -> CheckpointError:
    return CheckpointError(
        f"cannot read a transformers config from this {type(sam_model).__name__}: it is not laid out like a "
        f"SAM2 {what} ({type(error).__name__}: {error})"
    )


def sam2_config_from_model(sam_model: torch.nn.Module) -> Any:
    """The transformers ``Sam2Config`` of a SAM2 image model (Meta's ``SAM2Base``), read from its modules.

    Raises:
        CheckpointError: The model is not laid out like a SAM2 (Hiera trunk, FPN neck, SAM decoder).
    """
    transformers = import_transformers()
    try:
        sub_configs = _image_sub_configs(sam_model)
    except (AttributeError, IndexError, TypeError) as error:
        raise _not_sam2(sam_model, error, "model") from None
    return transformers.Sam2Config(**sub_configs)


def sam2_video_config_from_model(sam_model: torch.nn.Module) -> Any:
    """The transformers ``Sam2VideoConfig`` of a SAM2 model (a ``SAM2VideoPredictor`` or any ``SAM2Base``).

    Raises:
        CheckpointError: The model is not laid out like a SAM2 with video memory.
    """
    transformers = import_transformers()
    try:
        settings = {**_image_sub_configs(sam_model), **_memory_settings(sam_model)}
    except (AttributeError, IndexError, KeyError, TypeError, ZeroDivisionError) as error:
        raise _not_sam2(sam_model, error, "video model (memory attention, memory encoder)") from None
    return transformers.Sam2VideoConfig(**settings)


# (SAM2 attribute, the value transformers' Sam2VideoModel behaves as, on the model or on a module of it).
_FIXED_IN_TRANSFORMERS: tuple[tuple[str, str, Any], ...] = (
    ("", "fill_hole_area", 0),
    ("", "non_overlap_masks", False),
    ("", "non_overlap_masks_for_mem_enc", False),
    ("", "binarize_mask_from_pts_for_mem_enc", True),
    ("", "memory_temporal_stride_for_eval", 1),
    ("", "add_all_frames_to_correct_as_cond", False),
    ("", "clear_non_cond_mem_around_input", False),
    ("", "only_obj_ptrs_in_the_past_for_eval", True),
    ("", "use_multimask_token_for_obj_ptr", True),
    ("", "directly_add_no_mem_embed", True),
    ("", "use_obj_ptrs_in_encoder", True),
    ("", "use_mask_input_as_output_without_sam", True),
    ("", "iou_prediction_use_sigmoid", True),
    ("", "soft_no_obj_ptr", False),
    ("", "fixed_no_obj_ptr", True),
    ("memory_attention", "pos_enc_at_input", True),
    ("memory_attention.layers.0", "pos_enc_at_attn", False),
    ("memory_attention.layers.0", "pos_enc_at_cross_attn_keys", True),
    ("memory_attention.layers.0", "pos_enc_at_cross_attn_queries", False),
    ("memory_encoder.position_encoding", "normalize", True),
    ("memory_encoder.position_encoding", "temperature", 10000),
)
# Only read when the pointers get a temporal encoding.
_FIXED_WITH_TEMPORAL_POINTERS = (("", "proj_tpos_enc_in_obj_ptrs", True), ("", "use_signed_tpos_enc_to_obj_ptrs", True))


def video_setting_differences(sam_model: torch.nn.Module) -> list[str]:
    """The settings of a SAM2 video model that transformers' ``Sam2VideoModel`` fixes to another value.

    Each entry reads ``name=SAM2's value (transformers: its value)``; an empty list means the converted model tracks
    as this SAM2 does. Settings the model does not have (e.g. a ``SAM2Base`` has no ``fill_hole_area``) are skipped.
    """
    fixed = list(_FIXED_IN_TRANSFORMERS)
    if getattr(sam_model, "add_tpos_enc_to_obj_ptrs", False):
        fixed += _FIXED_WITH_TEMPORAL_POINTERS
    differences = []
    for path, name, expected in fixed:
        try:
            owner = sam_model.get_submodule(path) if path else sam_model
        except AttributeError:  # a model without that module has nothing to differ
            continue
        value = getattr(owner, name, expected)
        if value != expected:
            differences.append(f"{f'{path}.' if path else ''}{name}={value!r} (transformers: {expected!r})")
    return differences


def _load_strictly(model: Any, state: dict[str, torch.Tensor]) -> Any:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(key for key in set(own) & set(state) if own[key].shape != state[key].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"the SAM2 weights do not fit transformers' {type(model).__name__}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shape {mismatched[:3]}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def _cpu_state(sam_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu() for key, value in sam_model.state_dict().items()}


def sam2_to_transformers(sam_model: torch.nn.Module) -> Any:
    """A transformers ``Sam2Model`` (eval mode, CPU) with the weights of a Meta SAM2 image model.

    Raises:
        CheckpointError: The weights do not fit the derived config (a key missing or left over, another shape).
    """
    transformers = import_transformers()
    model = transformers.Sam2Model(sam2_config_from_model(sam_model))
    return _load_strictly(model, convert_sam2_state_dict(_cpu_state(sam_model)))


def sam2_video_to_transformers(sam_model: torch.nn.Module) -> Any:
    """A transformers ``Sam2VideoModel`` (eval mode, CPU) with the weights of a Meta SAM2 video predictor or model.

    Warns (:class:`usam.UsamWarning`) naming the settings transformers fixes to other values (see
    :func:`video_setting_differences`); the converted model then tracks differently from this SAM2.

    Raises:
        CheckpointError: The model is not a SAM2 with video memory, or its weights do not fit the derived config.
    """
    transformers = import_transformers()
    config = sam2_video_config_from_model(sam_model)
    differences = video_setting_differences(sam_model)
    if differences:
        warnings.warn(
            f"transformers' Sam2VideoModel fixes settings this SAM2 sets otherwise: {', '.join(differences)}; the "
            "converted model tracks differently from SAM2's video predictor",
            UsamWarning,
            stacklevel=2,
        )
    model = transformers.Sam2VideoModel(config)
    return _load_strictly(model, convert_sam2_state_dict(_cpu_state(sam_model), video=True))
