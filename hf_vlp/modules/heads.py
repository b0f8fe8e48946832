"""Task heads shared by the BERT-style models (ALBEF, BLIP, ViLT, VLMo).

``MaskedLMHead`` is BERT's prediction head (``dense -> act -> LayerNorm -> decoder``); its ``decoder.weight`` is meant
to be tied to the word embeddings by the model that owns it (``_tied_weights_keys``). ``ItmHead`` scores whether an
image and a text match from the fused ``[CLS]`` state (column 1 = "match", as the originals). ``MlpClassifierHead`` is the
two-layer classifier of the visual-reasoning heads.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class MaskedLMHead(nn.Module):
    """BERT MLM head: ``decoder(norm(act(dense(x))))`` with a vocabulary bias; returns ``[..., vocab_size]`` logits."""

    def __init__(
        self, hidden_size: int, vocab_size: int, *, activation: str = "gelu", layer_norm_eps: float = 1e-12
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[activation]
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden_states))))


class ItmHead(nn.Linear):
    """Image-text matching classifier on the fused ``[CLS]`` state ``[B, hidden]`` -> ``[B, 2]`` logits.

    A plain ``nn.Linear`` (keys ``weight``/``bias`` as in the originals) with a name saying what it is for.
    """

    def __init__(self, hidden_size: int, num_labels: int = 2) -> None:
        super().__init__(hidden_size, num_labels)


class MlpClassifierHead(nn.Sequential):
    """``Linear(D, D) -> ReLU -> Linear(D, num_labels)`` on a fused ``[CLS]`` state: the ``cls_head`` of ALBEF's and
    BLIP's NLVR2 / SNLI-VE models (keys ``0.*`` and ``2.*`` as in the originals)."""

    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_labels))
