"""Keeping every copy of the text vocabulary in step when a model's token embeddings are resized.

transformers' ``resize_token_embeddings`` resizes the input embeddings and the output head it finds. Our heads hold
more copies of the vocabulary: the frozen momentum towers and heads (ALBEF, BLIP), the VQA answer decoders with their
own embeddings and prediction heads. :func:`resize_vocabulary_copies` brings all of them to the new size:

- a sub-model named in ``vocabulary_submodels`` (e.g. ``answer_decoder``) is resized by its own
  ``resize_token_embeddings`` (its config follows);
- a prediction head's vocabulary bias follows its (tied) decoder weight, new entries zero;
- a momentum module whose embedding or vocabulary projection no longer matches its online twin takes the online new
  rows, so the EMA copies stay copies (and ``momentum_pairs`` keeps pairing equal shapes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modules.heads import MaskedLMHead


def with_rows(module: nn.Embedding | nn.Linear, num_rows: int, new_rows: torch.Tensor | None = None) -> nn.Module:
    """A copy of an embedding (a row per token) or a vocabulary projection (an output row per token) holding
    ``num_rows`` rows: the first rows kept, the added ones ``new_rows`` (weight rows) or zeros."""
    weight = module.weight.detach()
    kept = min(num_rows, weight.shape[0])
    if isinstance(module, nn.Embedding):
        resized: nn.Module = nn.Embedding(
            num_rows, module.embedding_dim, padding_idx=module.padding_idx, device=weight.device, dtype=weight.dtype
        )
    else:
        resized = nn.Linear(
            module.in_features, num_rows, bias=module.bias is not None, device=weight.device, dtype=weight.dtype
        )
    with torch.no_grad():
        resized.weight.zero_()
        resized.weight[:kept] = weight[:kept]
        if new_rows is not None and num_rows > kept:
            resized.weight[kept:] = new_rows[kept:num_rows]
        if getattr(resized, "bias", None) is not None:
            resized.bias.zero_()
            resized.bias[:kept] = module.bias.detach()[:kept]
    resized.weight.requires_grad_(module.weight.requires_grad)
    return resized


def resize_head_bias(head: MaskedLMHead, source: MaskedLMHead | None = None) -> None:
    """Make ``head.decoder.bias`` as long as its weight: kept entries, then ``source``'s (momentum) or zeros."""
    decoder = head.decoder
    bias = decoder.bias
    rows = decoder.weight.shape[0]
    if bias is None or bias.shape[0] == rows:
        return
    kept = min(rows, bias.shape[0])
    values = torch.zeros(rows, dtype=bias.dtype, device=bias.device)
    values[:kept] = bias.detach()[:kept]
    if source is not None and source.decoder.bias is not None and source.decoder.bias.shape[0] == rows:
        values[kept:] = source.decoder.bias.detach()[kept:]
    decoder.bias = nn.Parameter(values, requires_grad=bias.requires_grad)


def follow_online_rows(online: nn.Module, momentum: nn.Module) -> None:
    """Resize every embedding / linear layer of ``momentum`` whose weight no longer has the shape of its twin in
    ``online`` (same module structure), taking the online module's added rows."""
    online_modules = dict(online.named_modules())
    for name, module in list(momentum.named_modules()):
        twin = online_modules.get(name)
        if twin is None or not isinstance(module, (nn.Embedding, nn.Linear)):
            continue
        if module.weight.shape == twin.weight.shape:
            continue
        parent_name, _, attribute = name.rpartition(".")
        parent = momentum.get_submodule(parent_name) if parent_name else momentum
        setattr(parent, attribute, with_rows(module, twin.weight.shape[0], twin.weight.detach()))


def resize_vocabulary_copies(model: Any, num_tokens: int, mean_resizing: bool = True) -> None:
    """Bring every copy of the vocabulary in ``model`` to ``num_tokens`` rows (see the module docstring), then
    re-tie the weights."""
    for name in getattr(model, "vocabulary_submodels", ()):
        submodel = getattr(model, name)
        if submodel.get_input_embeddings().num_embeddings != num_tokens:
            submodel.resize_token_embeddings(num_tokens, mean_resizing=mean_resizing)
    model.tie_weights()
    heads = {name: module for name, module in model.named_modules() if isinstance(module, MaskedLMHead)}
    for name, head in heads.items():
        if not name.startswith("momentum_"):
            resize_head_bias(head)
    if hasattr(model, "momentum_pairs"):
        for online, momentum in model.momentum_pairs():
            follow_online_rows(online, momentum)
        model.tie_weights()
        for online, momentum in model.momentum_pairs():
            online_heads = {n: m for n, m in online.named_modules() if isinstance(m, MaskedLMHead)}
            for n, head in momentum.named_modules():
                if isinstance(head, MaskedLMHead):
                    resize_head_bias(head, online_heads.get(n))
        model.freeze_momentum()


__all__ = ["follow_online_rows", "resize_head_bias", "resize_vocabulary_copies", "with_rows"]
