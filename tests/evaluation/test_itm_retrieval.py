"""Retrieval of fusion models: ranks from score matrices, ITC vs ITM re-ranking, parity with ALBEF's own scoring."""

import pytest
import torch
from torch import nn

from hf_vlp.evaluation.itm_retrieval import itm_retrieval_metrics
from hf_vlp.evaluation.retrieval import ranks_from_scores
from hf_vlp.models.albef import VlpAlbefConfig, VlpAlbefForImageTextRetrieval, VlpAlbefImageProcessor, VlpAlbefProcessor
from hf_vlp.objectives.contrastive import RetrievalFeatures, rerank_top_k
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer


class IndexProcessor:
    """Images are integers, texts "img<k>": both become one-element id tensors."""

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        if images is not None:
            return {"pixel_values": torch.tensor(images, dtype=torch.float32)[:, None]}
        ids = torch.tensor([int(t[3:]) for t in text])[:, None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class OneHotRetrievalModel(nn.Module):
    """The retrieval interface with one-hot ITC embeddings (image k <-> "img<k>") and an ITM head that agrees or
    is reversed."""

    def __init__(self, num_images: int, itm_reversed: bool):
        super().__init__()
        self.anchor = nn.Linear(1, 1)  # a parameter for the device
        self.num_images, self.itm_reversed = num_images, itm_reversed

    def encode_images(self, pixel_values):
        index = pixel_values[:, 0].long()
        return RetrievalFeatures(nn.functional.one_hot(index, self.num_images).float(), hidden_states=index)

    def encode_texts(self, input_ids, attention_mask):
        index = input_ids[:, 0]
        return RetrievalFeatures(
            nn.functional.one_hot(index, self.num_images).float(), input_ids=index, attention_mask=attention_mask
        )

    def score_matrices(self, images, texts, k=256, fill_value=-100.0, batch_size=8):
        def match(image_indices, text_indices):
            same = (images.hidden_states[image_indices] == texts.input_ids[text_indices]).float()
            return -same if self.itm_reversed else same

        return rerank_top_k(images.embeds @ texts.embeds.T, match, k, add_similarity=False, fill_value=fill_value)


def test_ranks_count_ties_against_the_query():
    image_to_text = torch.tensor([[0.9, 0.1, 0.9], [0.2, 0.8, 0.1]])  # image 0 tied with text 2 (image 1's)
    text_to_image = torch.tensor([0, 1, 1])
    image_ranks, text_ranks = ranks_from_scores(image_to_text, image_to_text.T, text_to_image)
    assert image_ranks.tolist() == [1, 0]
    assert text_ranks.tolist() == [0, 0, 1]


def test_itm_re_ranking_replaces_the_itc_order_within_the_top_k():
    images, texts, owners = [0, 1, 2, 3], ["img0", "img1", "img2", "img3", "img0"], [0, 1, 2, 3, 0]
    good = itm_retrieval_metrics(OneHotRetrievalModel(4, False), IndexProcessor(), images, texts, owners, k=2)
    assert good["itc_i2t_r1"] == good["itc_t2i_r1"] == good["itm_i2t_r1"] == good["itm_t2i_r1"] == 1.0
    assert good["retrieval_chance_r1"] == 0.25
    reversed_itm = itm_retrieval_metrics(OneHotRetrievalModel(4, True), IndexProcessor(), images, texts, owners, k=4)
    assert reversed_itm["itc_mean_recall"] == 1.0 and reversed_itm["itm_i2t_r1"] == 0.0
    with pytest.raises(ValueError, match="every image captioned"):
        itm_retrieval_metrics(OneHotRetrievalModel(4, False), IndexProcessor(), images, texts[:4], [0, 1, 2, 2], k=2)


def test_albef_retrieval_metrics_match_the_retrieval_heads_own_scores():
    torch.manual_seed(0)
    tokenizer = synthetic_wordpiece_tokenizer()
    config = VlpAlbefConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, fusion_layer=1),
        embed_dim=16, queue_size=8,
    )
    model = VlpAlbefForImageTextRetrieval(config).eval()
    processor = VlpAlbefProcessor(VlpAlbefImageProcessor(size=32), tokenizer, max_length=12)
    images = [torch.rand(3, 32, 32) for _ in range(4)]
    texts = ["a red circle", "two blue squares", "a green cross on the left", "three small triangles", "a red shape"]
    owners = [0, 1, 2, 3, 0]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    encoded = processor(text=texts, return_tensors="pt", padding="max_length")
    scores = model.rank(pixel_values, encoded["input_ids"], encoded["attention_mask"], k=2)
    image_ranks, text_ranks = ranks_from_scores(scores.image_to_text, scores.text_to_image, torch.tensor(owners))
    metrics = itm_retrieval_metrics(model, processor, images, texts, owners, k=2, batch_size=3)
    assert metrics["itm_i2t_r1"] == pytest.approx((image_ranks < 1).float().mean().item())
    assert metrics["itm_t2i_r5"] == pytest.approx((text_ranks < 5).float().mean().item())
    with pytest.raises(TypeError, match="retrieval interface"):
        itm_retrieval_metrics(nn.Linear(2, 2), processor, images, texts, owners, k=2)
