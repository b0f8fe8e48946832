"""Grad-CAM of ALBEF's image-text matching score over the image patches (weakly-supervised grounding).

ALBEF's ``Grounding.py`` localises a referring expression without boxes: it back-propagates the ITM "match" logit
to the cross-attention probabilities of one fusion layer (``block_num=8`` = the third fusion layer of the base model)
and keeps ``attention * clamp(gradient, min=0)`` for every (head, text token, image patch), averaged over heads and
text tokens. Candidate boxes are then ranked by the heatmap mass they cover.

One deliberate difference: the original averages over the *padded* text length (pads contribute zeros), so a text's
map shrinks with the longest text in its batch; here the mean is over the text's own tokens (mask-weighted), which
differs from the original by a positive per-text factor only and does not depend on batching.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F

from .modeling_albef import AlbefTowersMixin, VlpAlbefModel

# Grounding.py uses text layer block_num=8 with fusion_layer=6: the third cross-attending layer.
ORIGINAL_GRADCAM_FUSION_LAYER = 2


def default_gradcam_layer(num_fusion_layers: int) -> int:
    """The original's layer (third fusion layer) when the model has one, else its last fusion layer."""
    return min(ORIGINAL_GRADCAM_FUSION_LAYER, num_fusion_layers - 1)


def itm_gradcam(
    model: VlpAlbefModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    layer: int | None = None,
    interpolate_pos_encoding: bool = False,
) -> torch.Tensor:
    """Grad-CAM heatmaps ``[B, rows, cols]`` (non-negative) of pair b = (image b, text b) over image b's patch grid.

    ``layer`` indexes the fusion layers (0 = the first cross-attending layer); ``None`` picks the original's third
    fusion layer, or the last one when the model has fewer. The model runs in eval mode (no dropout) and its mode is
    restored afterwards; no parameter gradients are written (``torch.autograd.grad`` on the attention map only).
    """
    if not isinstance(model, AlbefTowersMixin):
        raise TypeError(
            f"itm_gradcam needs an ALBEF model with the ITM towers (VlpAlbefModel, VlpAlbefForMaskedLM, "
            f"VlpAlbefForPretraining, VlpAlbefForImageTextRetrieval), got {type(model).__name__}"
        )
    if pixel_values.ndim != 4 or input_ids.ndim != 2:
        raise ValueError(
            f"pixel_values must be [B, C, H, W] and input_ids [B, L], got {tuple(pixel_values.shape)} and "
            f"{tuple(input_ids.shape)}"
        )
    if pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"itm_gradcam scores pairs (image b, text b): got {pixel_values.shape[0]} images and "
            f"{input_ids.shape[0]} texts; repeat the image for each text to ground several texts in one image"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    text_config = model.config.text_config
    num_fusion_layers = text_config.num_hidden_layers - text_config.fusion_layer
    if num_fusion_layers < 1:
        raise ValueError("this model has no fusion (cross-attention) layers, so there is no map to explain")
    if layer is None:
        layer = default_gradcam_layer(num_fusion_layers)
    elif not 0 <= layer < num_fusion_layers:
        raise ValueError(f"layer must index a fusion layer, 0 <= layer < {num_fusion_layers}, got {layer}")
    patch_size = model.config.vision_config.patch_size
    rows, cols = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image_states = model.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
            text_states = model.encode_text(input_ids, attention_mask).last_hidden_state
        with torch.enable_grad():
            # The towers above need no graph: only the fusion layers lie between the map and the logit.
            image_states = image_states.detach().requires_grad_(True)
            fused = model.fuse(text_states, image_states, attention_mask, output_attentions=True)
            attention = fused.cross_attentions[layer]
            match_logit = model.itm_head(fused.last_hidden_state[:, 0])[:, 1]
            (gradient,) = torch.autograd.grad(match_logit.sum(), attention)
    finally:
        model.train(was_training)
    return gradcam_from_attention(attention.detach(), gradient, attention_mask, (rows, cols))


def gradcam_from_attention(
    attention: torch.Tensor, gradient: torch.Tensor, attention_mask: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Combine cross-attention ``[B, H, L, 1 + P]`` and its gradient into ``[B, rows, cols]`` maps.

    The ``[CLS]`` image token (key 0) is dropped; padded text tokens are excluded from the token mean.
    """
    rows, cols = grid
    if attention.shape[-1] != 1 + rows * cols:
        raise ValueError(
            f"the cross-attention covers {attention.shape[-1] - 1} patches, not the {rows}x{cols} grid of the image"
        )
    text_mask = attention_mask.to(attention.dtype)[:, None, :, None]
    cam = attention[..., 1:] * gradient[..., 1:].clamp(min=0) * text_mask
    per_token = cam.mean(dim=1)
    per_image = per_token.sum(dim=1) / attention_mask.sum(dim=1, keepdim=True).clamp(min=1).to(attention.dtype)
    return per_image.reshape(-1, rows, cols)


def render_gradcam(
    image: Image.Image,
    heatmap: torch.Tensor,
    path: str | os.PathLike,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Path:
    """Write ``image`` blended with the colour-mapped ``heatmap`` ``[rows, cols]`` as a PNG of the image's size.

    The heatmap is min-max normalised and bicubically upsampled to the image; ``alpha`` is the heatmap's weight.
    """
    from matplotlib import colormaps

    if heatmap.ndim == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be one map [rows, cols], got shape {tuple(heatmap.shape)}; index the batch")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if colormap not in colormaps:
        raise ValueError(f"unknown matplotlib colormap {colormap!r}; e.g. 'jet', 'viridis', 'inferno'")
    rgb = image.convert("RGB")
    width, height = rgb.size
    heat = heatmap.detach().to("cpu", torch.float32)
    if not torch.isfinite(heat).all():
        raise ValueError("heatmap contains NaN or infinite values")
    heat = heat - heat.min()
    peak = heat.max()
    heat = heat / peak if peak > 0 else heat
    heat = F.interpolate(heat[None, None], size=(height, width), mode="bicubic", align_corners=False)[0, 0]
    colours = colormaps[colormap](heat.clamp(0, 1).numpy())[..., :3]
    overlay = Image.fromarray((colours * 255).round().astype("uint8"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.blend(rgb, overlay, alpha).save(path, format="PNG")
    return path
