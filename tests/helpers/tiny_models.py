"""Tiny configs and batches of every architecture, built from one base per architecture.

A test names only what it changes: ``vision``/``text`` override the base tower settings key by key, other keyword
arguments go to the top-level config. Seeded weights depend on the config, so each test keeps the exact values it
always had. A new architecture adds its base settings and a ``tiny_<arch>_config`` here.
"""

from __future__ import annotations

import torch

from hf_vlp.models.albef import VlpAlbefConfig
from hf_vlp.models.blip import VlpBlipConfig
from hf_vlp.models.clip import VlpClipConfig
from hf_vlp.models.coca import VlpCocaConfig
from hf_vlp.models.vilt import VlpViltConfig
from hf_vlp.models.vlmo import VlpVlmoConfig

PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 2, 3, 4
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

# ViT on 16 px images, 8 px patches: 4 patches + [CLS]
TINY_VIT = dict(
    hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8
)
# ALBEF: one text layer, then the fusion layers
TINY_ALBEF_TEXT = dict(
    vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
    max_position_embeddings=12, fusion_layer=1,
)
# BLIP's MED with every special token of the BLIP tokenizer ([DEC] = bos 38, [ENC] 39)
TINY_BLIP_TEXT = dict(
    vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=12, pad_token_id=PAD_ID, cls_token_id=CLS_ID, sep_token_id=SEP_ID, mask_token_id=MASK_ID,
    bos_token_id=38, enc_token_id=39, **NO_DROPOUT,
)

# the captioning / VQA decoders' text: wider, positions for prompt + answer
WIDE_BLIP_TEXT = dict(hidden_size=32, intermediate_size=64, max_position_embeddings=24)


# ViLT: one transformer over 12 text tokens and the patches of a 16 px position grid (8 px patches)
TINY_VILT = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8,
    vocab_size=40, max_position_embeddings=12, num_labels=5, pad_token_id=PAD_ID, cls_token_id=CLS_ID,
    sep_token_id=SEP_ID, mask_token_id=MASK_ID, hidden_dropout_prob=0.0,
)

# VLMo: 4 multiway blocks (VL-FFN in the top 2) over 12 text tokens and the 4 patches of a 16 px image (8 px patches)
TINY_VLMO = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2, vl_ffn_start_layer=2,
    image_size=16, patch_size=8, vocab_size=40, max_text_length=12, relative_position_text_length=16, num_labels=5,
    pad_token_id=PAD_ID, cls_token_id=CLS_ID, sep_token_id=SEP_ID, mask_token_id=MASK_ID, drop_path_rate=0.0,
    embedding_dropout_prob=0.0,
)


# CoCa: a 16 px ViT with a 5-query pooler (1 contrastive + 4 decoder tokens), CLIP's tiny BPE ids with pad 0
TINY_COCA = dict(
    projection_dim=16,
    vision_config=dict(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8,
        pooler_num_queries=5, pooler_num_attention_heads=2,
    ),
    text_config=dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=12, pad_token_id=0, bos_token_id=62, eos_token_id=63,
    ),
    decoder_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2),
)


# CLIP's BPE vocabulary ends in <|startoftext|> (62), <|endoftext|> (63): EOT, the largest id, is the pooled token
CLIP_VOCAB, CLIP_EOT = 64, 63
TINY_CLIP_TEXT = dict(
    vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=16, eos_token_id=CLIP_EOT, bos_token_id=CLIP_EOT - 1,
)
TINY_CLIP_VISION = {
    "vit": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                patch_size=8),
    "resnet": dict(architecture="resnet", resnet_layers=[1, 1, 1, 1], resnet_width=8, resnet_heads=2, image_size=64),
}


def tiny_clip_config(architecture: str = "vit", **settings: object) -> VlpClipConfig:
    """A tiny CLIP with a ``vit`` or ``resnet`` image tower; ``settings`` go to ``VlpClipConfig``."""
    vision = dict(TINY_CLIP_VISION[architecture])
    return VlpClipConfig(projection_dim=24, vision_config=vision, text_config=dict(TINY_CLIP_TEXT), **settings)


def tiny_clip_inputs(config: VlpClipConfig, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Noise images of the config's size and ``<|startoftext|> words.. <|endoftext|>`` rows of random lengths,
    zero-padded to the context length."""
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    length = config.text_config.max_position_embeddings
    input_ids = torch.randint(1, CLIP_EOT - 1, (batch, length), generator=generator)
    lengths = torch.randint(3, length, (batch,), generator=generator)
    for row, n in enumerate(lengths.tolist()):
        input_ids[row, 0] = CLIP_EOT - 1
        input_ids[row, n - 1] = CLIP_EOT
        input_ids[row, n:] = 0
    return {"pixel_values": pixel_values, "input_ids": input_ids}


def tiny_albef_config(vision: dict | None = None, text: dict | None = None, **settings: object) -> VlpAlbefConfig:
    """``TINY_VIT`` + ``TINY_ALBEF_TEXT`` with the given overrides; ``settings`` go to ``VlpAlbefConfig``."""
    return VlpAlbefConfig(vision_config={**TINY_VIT, **(vision or {})}, text_config={**TINY_ALBEF_TEXT, **(text or {})},
                          **settings)


def tiny_blip_config(vision: dict | None = None, text: dict | None = None, **settings: object) -> VlpBlipConfig:
    """``TINY_VIT`` + ``TINY_BLIP_TEXT`` with the given overrides; ``settings`` go to ``VlpBlipConfig`` (embedding
    width 8 unless given)."""
    settings = {"embed_dim": 8, **settings}
    return VlpBlipConfig(vision_config={**TINY_VIT, **(vision or {})}, text_config={**TINY_BLIP_TEXT, **(text or {})},
                         **settings)


def tiny_captions(
    generator: torch.Generator, batch: int, *, length: int = 7, vocab_end: int = 40,
    padded_rows: slice = slice(1, None, 2), padded_from: int = 5, sep_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] words..`` rows of random ids in ``[5, vocab_end)`` and their padding mask: ``padded_rows`` are
    padded from column ``padded_from``. With ``sep_id`` every row ends in ``[SEP]`` (BLIP's tokenizer), the padded
    ones just before their padding."""
    input_ids = torch.randint(5, vocab_end, (batch, length), generator=generator)
    input_ids[:, 0] = CLS_ID
    attention_mask = torch.ones_like(input_ids)
    attention_mask[padded_rows, padded_from:] = 0
    if sep_id is not None:
        input_ids[:, -1] = sep_id
        input_ids[padded_rows, padded_from - 1] = sep_id
    input_ids[attention_mask == 0] = PAD_ID
    return input_ids, attention_mask


def tiny_batch(
    batch: int = 8, seed: int = 0, *, image_shape: tuple[int, ...] = (3, 16, 16), **caption_options: object
) -> dict[str, torch.Tensor]:
    """``tiny_captions`` and, drawn after them from the same seeded generator, one noise image per row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids, attention_mask = tiny_captions(generator, batch, **caption_options)
    pixel_values = torch.randn(batch, *image_shape, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def tiny_blip_batch(batch: int = 8, seed: int = 0, **options: object) -> dict[str, torch.Tensor]:
    """``tiny_batch`` with BLIP's ``[SEP]``-ended captions over the ids below ``[DEC]``."""
    return tiny_batch(batch, seed, vocab_end=38, sep_id=SEP_ID, **options)


def tiny_vilt_config(**settings: object) -> VlpViltConfig:
    return VlpViltConfig(**{**TINY_VILT, **settings})


def tiny_coca_config(**settings: object) -> VlpCocaConfig:
    """``TINY_COCA``; ``vision``/``text``/``decoder`` override tower settings key by key."""
    towers = {
        name: {**TINY_COCA[name], **settings.pop(short, {})}  # type: ignore[dict-item]
        for name, short in (("vision_config", "vision"), ("text_config", "text"), ("decoder_config", "decoder"))
    }
    return VlpCocaConfig(**{**TINY_COCA, **towers, **settings})


def tiny_coca_batch(batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """``tiny_batch``'s captions ending in CoCa's end-of-text (63) after a start-of-text (62), padded with 0, with 16 px
    noise images."""
    rows = tiny_batch(batch, seed, vocab_end=62, sep_id=63)
    rows["input_ids"][:, 0] = 62
    return rows


def tiny_vlmo_config(**settings: object) -> VlpVlmoConfig:
    return VlpVlmoConfig(**{**TINY_VLMO, **settings})


def tiny_vlmo_batch(batch: int = 8, seed: int = 0, image_size: int = 16) -> dict[str, torch.Tensor]:
    """``tiny_batch``'s [SEP]-ended captions padded to VLMo's 12 tokens, with noise images of ``image_size``."""
    rows = tiny_batch(batch, seed, image_shape=(3, image_size, image_size), sep_id=SEP_ID)
    pad = torch.zeros(batch, TINY_VLMO["max_text_length"] - rows["input_ids"].shape[1], dtype=torch.long)
    rows["input_ids"] = torch.cat([rows["input_ids"], pad + PAD_ID], dim=1)
    rows["attention_mask"] = torch.cat([rows["attention_mask"], pad], dim=1)
    return rows


def tiny_vilt_batch(
    batch: int = 8, seed: int = 0, *, image_sizes: tuple[tuple[int, int], ...] = ((16, 24), (16, 16), (8, 24)),
    suffix: str = "",
) -> dict[str, torch.Tensor]:
    """``tiny_batch``'s [SEP]-ended captions with noise images of the given sizes (cycled over the rows), each
    top-left on a zero canvas of the largest size with its ``pixel_mask``: ViLT's variable-resolution input.
    ``suffix`` names the image tensors (``"_2"``: NLVR2's second images)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids, attention_mask = tiny_captions(generator, batch, sep_id=SEP_ID)
    height, width = max(size[0] for size in image_sizes), max(size[1] for size in image_sizes)
    pixel_values = torch.zeros(batch, 3, height, width)
    pixel_mask = torch.zeros(batch, height, width, dtype=torch.long)
    for row in range(batch):
        rows, columns = image_sizes[row % len(image_sizes)]
        pixel_values[row, :, :rows, :columns] = torch.randn(3, rows, columns, generator=generator)
        pixel_mask[row, :rows, :columns] = 1
    return {
        "input_ids": input_ids, "attention_mask": attention_mask,
        f"pixel_values{suffix}": pixel_values, f"pixel_mask{suffix}": pixel_mask,
    }
