"""Text towers.

``CausalTextTransformer`` is CLIP's (and CoCa's unimodal) text encoder: token + learned absolute position
embeddings, pre-norm blocks under a causal mask, a final LayerNorm, and pooling at the end-of-text token.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .transformer import BlockOptions, PreNormEncoder


def end_of_text_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of the first ``eos_token_id`` in every row; a row without one is an error.

    Picking the token by id (not by ``argmax``) keeps pooling correct whatever the pad id and vocabulary order.
    """
    is_eos = input_ids == eos_token_id
    found = is_eos.any(dim=-1)
    if input_ids.device.type != "cpu":  # no host sync on accelerators: the check runs asynchronously there
        torch._assert_async(found.all(), f"input_ids contain a row without the end-of-text token {eos_token_id}")
    elif not bool(found.all()):
        rows = torch.nonzero(~found).flatten().tolist()
        raise ValueError(
            f"input_ids rows {rows} contain no end-of-text token (id {eos_token_id}). Tokenize the text with the "
            "model's processor, which appends it, or set text_config.eos_token_id to your tokenizer's end-of-text id."
        )
    return is_eos.int().argmax(dim=-1)


class CausalTextTransformer(nn.Module):
    """Token/position embeddings, causal pre-norm encoder, final norm and end-of-text pooling.

    Padding needs no mask: pads follow the end-of-text token, which the causal mask hides them from. The
    ``attention_mask`` argument is therefore accepted and ignored (right padding, as CLIP's tokenizer does).
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        num_layers: int,
        vocab_size: int,
        context_length: int,
        eos_token_id: int,
        config: Any = None,
    ) -> None:
        super().__init__()
        width = options.hidden_size
        self.context_length = context_length
        self.eos_token_id = eos_token_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(context_length, width).normal_(std=0.01))
        self.encoder = PreNormEncoder(options, num_layers, config=config)
        self.norm_final = nn.LayerNorm(width, eps=options.layer_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"input_ids length {length} exceeds the context length {self.context_length}; tokenize with the "
                "model's processor, which truncates (keeping the end-of-text token) and warns."
            )
        eos_positions = end_of_text_positions(input_ids, self.eos_token_id)
        tokens = self.token_embedding(input_ids) + self.position_embedding[:length]
        encoded = self.encoder(
            tokens, is_causal=True, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        last = self.norm_final(encoded.last_hidden_state)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_positions]
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
