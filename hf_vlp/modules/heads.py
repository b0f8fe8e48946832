"""Task heads shared by the BERT-style models (ALBEF, BLIP, ViLT, VLMo).

``MaskedLMHead`` is BERT's prediction head (``dense -> act -> LayerNorm -> decoder``); its ``decoder.weight`` is meant
to be tied to the word embeddings by the model that owns it (``_tied_weights_keys``). ``ItmHead`` scores whether an
image and a text match from the fused ``[CLS]`` state (column 1 = "match", as the originals). ``MlpClassifierHead`` is the
two-layer classifier of the visual-reasoning and VQA heads, its activation, width and LayerNorm options.
``FirstTokenPooler`` is BERT's ``tanh(dense(x[:, 0]))`` pooler.
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


class FirstTokenPooler(nn.Module):
    """BERT's pooler: ``tanh(dense(x[:, 0]))``, the pooled state of the first token (ViLT's ``cls_feats``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class ItmHead(nn.Linear):
    """Image-text matching classifier on the fused ``[CLS]`` state ``[B, hidden]`` -> ``[B, 2]`` logits.

    A plain ``nn.Linear`` (keys ``weight``/``bias`` as in the originals) with a name saying what it is for.
    """

    def __init__(self, hidden_size: int, num_labels: int = 2) -> None:
        super().__init__(hidden_size, num_labels)


class MlpClassifierHead(nn.Sequential):
    """``Linear(D, M) [-> LayerNorm(M)] -> act -> Linear(M, num_labels)`` on a pooled state.

    The defaults (``M = D``, ReLU, no norm) are the ``cls_head`` of ALBEF's and BLIP's NLVR2 / SNLI-VE models (keys
    ``0.*`` and ``2.*`` as in the originals). ViLT's VQA and NLVR2 classifiers are ``intermediate_size=2 * D``,
    ``activation="gelu"`` and ``layer_norm_eps=1e-5`` (keys ``0.*``, ``1.*`` (the norm) and ``3.*``, as ViLT's).
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        *,
        intermediate_size: int | None = None,
        activation: str = "relu",
        layer_norm_eps: float | None = None,
    ) -> None:
        width = intermediate_size or hidden_size
        layers: list[nn.Module] = [nn.Linear(hidden_size, width)]
        if layer_norm_eps is not None:
            layers.append(nn.LayerNorm(width, eps=layer_norm_eps))
        layers += [ACT2FN[activation], nn.Linear(width, num_labels)]
        super().__init__(*layers)
