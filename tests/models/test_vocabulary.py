"""``resize_token_embeddings`` brings every copy of the vocabulary along: momentum towers and heads, VQA answer
decoders and their heads; the resized model runs on the new tokens and reloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_vlp.models.albef import VlpAlbefForPretraining, VlpAlbefForQuestionAnswering
from hf_vlp.models.blip import VlpBlipForImageTextRetrieval, VlpBlipForPretraining, VlpBlipForQuestionAnswering
from tests.helpers.tiny_models import MASK_ID, CLS_ID, SEP_ID, tiny_albef_config, tiny_blip_batch, tiny_blip_config

OLD, NEW = 40, 43
ALBEF_TOKENS = dict(mask_token_id=MASK_ID, cls_token_id=CLS_ID, sep_token_id=SEP_ID)


def albef_vqa_config():
    return tiny_albef_config(vision=dict(hidden_size=16), text=dict(encoder_width=16, **ALBEF_TOKENS))


CASES = {
    "blip-vqa": (VlpBlipForQuestionAnswering, tiny_blip_config),
    "blip-pretraining": (VlpBlipForPretraining, tiny_blip_config),
    "blip-retrieval": (VlpBlipForImageTextRetrieval, tiny_blip_config),
    "albef-pretraining": (VlpAlbefForPretraining, lambda: tiny_albef_config(text=ALBEF_TOKENS)),
    "albef-vqa": (VlpAlbefForQuestionAnswering, albef_vqa_config),
}


def vocabulary_sizes(model: nn.Module) -> dict[str, int]:
    """Rows of every embedding and output width of every linear layer over the vocabulary (old or new size)."""
    sizes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings in (OLD, NEW):
            sizes[name] = module.num_embeddings
        elif isinstance(module, nn.Linear) and module.out_features in (OLD, NEW):
            sizes[name] = module.out_features
            if module.bias is not None:
                sizes[f"{name}.bias"] = module.bias.shape[0]
    return sizes


def forward_with_new_token(model: nn.Module) -> torch.Tensor:
    batch = tiny_blip_batch(2)
    batch["input_ids"][:, 1] = NEW - 1
    if isinstance(model, (VlpBlipForQuestionAnswering, VlpAlbefForQuestionAnswering)):
        return model(**batch, answer_input_ids=batch["input_ids"], return_loss=True).loss
    if isinstance(model, VlpBlipForImageTextRetrieval):
        return model(**batch, image_ids=torch.arange(2), generator=torch.Generator().manual_seed(0)).loss
    return model(**batch, return_loss=True, generator=torch.Generator().manual_seed(0)).loss


@pytest.mark.parametrize("case", list(CASES))
def test_every_vocabulary_copy_follows_a_resize(case, tmp_path):
    model_class, config = CASES[case]
    torch.manual_seed(0)
    model = model_class(config()).eval()
    old_sizes = vocabulary_sizes(model)
    online_rows = model.get_input_embeddings().weight[:OLD].detach().clone()
    model.resize_token_embeddings(NEW)
    sizes = vocabulary_sizes(model)
    assert sizes.keys() == old_sizes.keys() and set(sizes.values()) == {NEW}, sizes
    assert model.config.text_config.vocab_size == NEW
    torch.testing.assert_close(model.get_input_embeddings().weight[:OLD], online_rows)
    if hasattr(model, "momentum_text_model"):
        momentum = model.momentum_text_model.get_input_embeddings().weight
        torch.testing.assert_close(momentum, model.get_input_embeddings().weight)  # an EMA copy stays a copy
        assert not momentum.requires_grad
    loss = forward_with_new_token(model)
    assert torch.isfinite(loss)
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    assert vocabulary_sizes(reloaded) == sizes
    torch.testing.assert_close(forward_with_new_token(reloaded), loss)
