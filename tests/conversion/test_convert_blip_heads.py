"""BLIP converter heads with momentum towers and queues (pre-training, retrieval) and NLVR2: the CLI writes loadable
folders that reproduce the original's recorded outputs; an NLVR2 checkpoint in the original key layout
(``models/nlvr_encoder.py``) converts and matches a reference forward written from those keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conversion.blip_heads import HEADS, resolve_head, source_kind
from conversion.common import ConversionError, run_cli
from conversion.convert_blip import convert_blip_checkpoint, main
from hf_vlp.models.blip.modeling_blip_pretraining import VlpBlipForImageTextRetrieval, VlpBlipForPretraining
from hf_vlp.models.blip.modeling_blip_reasoning import VlpBlipForVisualReasoning
from hf_vlp.objectives.momentum import momentum_update

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "originals" / "blip_pretrain"
CHECKPOINT, CONFIG, VOCAB = FIXTURE / "checkpoint.pth", FIXTURE / "original_config.json", FIXTURE / "vocab.txt"
ATOL = 1e-5


def pretrain_state() -> dict[str, torch.Tensor]:
    return torch.load(CHECKPOINT, weights_only=True)["model"]


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    torch.save({"model": state, "config": config or {}, "epoch": 0}, path)
    return path


def fixture_tensors() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")


# --------------------------------------------------------------------------------------------------- momentum heads


def test_cli_writes_a_pretraining_folder_that_reproduces_the_recorded_step(tmp_path: Path, capsys) -> None:
    output = tmp_path / "blip-pretrain"
    status = run_cli(main, ["--checkpoint", str(CHECKPOINT), "--output", str(output), "--original-config",
                            str(CONFIG), "--tokenizer", str(VOCAB)])  # --head auto: the pre-training head
    assert status == 0, capsys.readouterr().err
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in output.iterdir()}
    model = VlpBlipForPretraining.from_pretrained(output, dtype=torch.float32).eval()
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("momentum_"))
    assert model.config.queue_size == 8 and model.config.embed_dim == 16 and model.temp.item() == 0.0625
    original = pretrain_state()
    assert torch.equal(model.image_queue.queue, original["image_queue"])
    assert int(model.text_queue.ptr) == int(original["queue_ptr"])
    inputs, expected = fixture_tensors()
    momentum_update(model.momentum_pairs(), model.momentum)
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], return_loss=True, alpha=0.4,
                    itm_negative_image_indices=expected["itm_neg_image_idx_for_text"],
                    itm_negative_text_indices=expected["itm_neg_text_idx_for_image"])
    for ours, theirs in (("loss_itc", "loss_ita"), ("loss_itm", "loss_itm"), ("loss_lm", "loss_lm")):
        torch.testing.assert_close(getattr(out, ours), expected[theirs], atol=ATOL, rtol=0, msg=ours)
    card = (output / "README.md").read_text()
    assert "VlpBlipForPretraining" in card and "tied copy of the same text_encoder" in card


def test_retrieval_layout_converts_with_its_id_queue_and_single_pointer(tmp_path: Path) -> None:
    retrieval = {key: value for key, value in pretrain_state().items() if not key.startswith("text_decoder.")}
    retrieval.pop("queue_ptr")
    retrieval["ptr_queue"] = torch.tensor([4])
    retrieval["idx_queue"] = torch.tensor([[5, 6, 7, 8, -100, -100, -100, -100]])
    result = convert_blip_checkpoint(save_checkpoint(tmp_path / "retrieval.pth", retrieval), None, CONFIG, VOCAB)
    assert result.kind == "retrieval" and result.head == "retrieval"
    model = result.model
    assert isinstance(model, VlpBlipForImageTextRetrieval)
    assert model.idx_queue.queue.tolist() == [[5, 6, 7, 8, -100, -100, -100, -100]]
    assert int(model.image_queue.ptr) == int(model.text_queue.ptr) == int(model.idx_queue.ptr) == 4
    assert torch.equal(model.momentum_text_proj.bias, retrieval["text_proj_m.bias"])
    inputs, expected = fixture_tensors()
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    torch.testing.assert_close(out.logits_per_image, expected["sim_i2t_with_queue"], atol=1e-4, rtol=0)
    # a pre-training checkpoint gives a retrieval model too, its id queue empty at the same pointer
    from_pretraining = convert_blip_checkpoint(CHECKPOINT, None, CONFIG, VOCAB, head="retrieval")
    assert (from_pretraining.model.idx_queue.queue == -100).all()
    assert any("decoder" in reason for reason in from_pretraining.dropped.values())
    with pytest.raises(ConversionError, match="--head pretraining .* cannot be written from a BLIP retrieval"):
        resolve_head("retrieval", "pretraining")


# --------------------------------------------------------------------------------------------------- NLVR2

TEXT_WIDTH, TEXT_HEADS, FFN, TEXT_LAYERS, VOCAB_SIZE, POSITIONS = 16, 2, 32, 7, 66, 40
VISION_WIDTH = 48  # the fixture's ViT


def nlvr_original_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """``BLIP_NLVR``'s state dict keys (``models/blip_nlvr.py`` + ``models/nlvr_encoder.py``) with O(1) random values:
    the fixture's ViT, a 7-layer encoder (``merge_layer`` in layer 6) and ``cls_head``."""
    generator = torch.Generator().manual_seed(seed)

    def linear(prefix: str, out_size: int, in_size: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": torch.randn(out_size, in_size, generator=generator) / math.sqrt(in_size),
                f"{prefix}.bias": 0.1 * torch.randn(out_size, generator=generator)}

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(TEXT_WIDTH, generator=generator),
                f"{prefix}.bias": 0.1 * torch.randn(TEXT_WIDTH, generator=generator)}

    state = {key: value for key, value in pretrain_state().items() if key.startswith("visual_encoder.")}
    text = "text_encoder."
    state[text + "embeddings.word_embeddings.weight"] = 0.5 * torch.randn(VOCAB_SIZE, TEXT_WIDTH, generator=generator)
    state[text + "embeddings.position_embeddings.weight"] = 0.5 * torch.randn(
        POSITIONS, TEXT_WIDTH, generator=generator
    )
    state[text + "embeddings.position_ids"] = torch.arange(POSITIONS).view(1, -1)
    state |= norm(text + "embeddings.LayerNorm")
    for index in range(TEXT_LAYERS):
        layer = f"{text}encoder.layer.{index}."
        for part in ("query", "key", "value"):
            state |= linear(f"{layer}attention.self.{part}", TEXT_WIDTH, TEXT_WIDTH)
        state |= linear(f"{layer}attention.output.dense", TEXT_WIDTH, TEXT_WIDTH)
        state |= norm(f"{layer}attention.output.LayerNorm")
        for image in (0, 1):
            state |= linear(f"{layer}crossattention.self{image}.query", TEXT_WIDTH, TEXT_WIDTH)
            state |= linear(f"{layer}crossattention.self{image}.key", TEXT_WIDTH, VISION_WIDTH)
            state |= linear(f"{layer}crossattention.self{image}.value", TEXT_WIDTH, VISION_WIDTH)
            state |= linear(f"{layer}crossattention.output.dense{image}", TEXT_WIDTH, TEXT_WIDTH)
        if index >= 6:
            state |= linear(f"{layer}crossattention.output.merge_layer", TEXT_WIDTH, 2 * TEXT_WIDTH)
        state |= norm(f"{layer}crossattention.output.LayerNorm")
        state |= linear(f"{layer}intermediate.dense", FFN, TEXT_WIDTH)
        state |= linear(f"{layer}output.dense", TEXT_WIDTH, FFN) | norm(f"{layer}output.LayerNorm")
    state |= linear("cls_head.0", TEXT_WIDTH, TEXT_WIDTH) | linear("cls_head.2", 2, TEXT_WIDTH)
    return state


def nlvr_original_config(tmp_path: Path) -> Path:
    config = json.loads(CONFIG.read_text())
    config["med_config"] |= {"hidden_size": TEXT_WIDTH, "num_attention_heads": TEXT_HEADS, "intermediate_size": FFN,
                             "num_hidden_layers": TEXT_LAYERS, "vocab_size": VOCAB_SIZE}
    path = tmp_path / "nlvr_config.json"
    path.write_text(json.dumps(config))
    return path


def reference_nlvr_logits(
    state: dict[str, torch.Tensor], input_ids: torch.Tensor, mask: torch.Tensor, images: tuple[torch.Tensor, ...],
    enc_token_id: int,
) -> torch.Tensor:
    """``BLIP_NLVR.forward(train=False)`` written from the original keys: post-norm BERT layers whose cross-attention
    runs ``self0`` over image 0 and ``self1`` over image 1, projects each by ``dense0``/``dense1``, averages them (or
    ``merge_layer`` of the concatenation), then the shared LayerNorm residual; ``cls_head`` on the ``[ENC]`` state."""
    f = torch.nn.functional

    def lin(prefix: str, x: torch.Tensor) -> torch.Tensor:
        return f.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    def ln(prefix: str, x: torch.Tensor) -> torch.Tensor:
        return f.layer_norm(x, (TEXT_WIDTH,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-12)

    def attention(prefix: str, x: torch.Tensor, memory: torch.Tensor, additive: torch.Tensor | None) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], TEXT_HEADS, -1).transpose(1, 2)

        q = heads(lin(prefix + ".query", x))
        k, v = heads(lin(prefix + ".key", memory)), heads(lin(prefix + ".value", memory))
        scores = q @ k.transpose(-1, -2) / math.sqrt(TEXT_WIDTH // TEXT_HEADS)
        if additive is not None:
            scores = scores + additive
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)

    text = "text_encoder."
    ids = input_ids.clone()
    ids[:, 0] = enc_token_id
    positions = state[text + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    h = ln(text + "embeddings.LayerNorm", state[text + "embeddings.word_embeddings.weight"][ids] + positions)
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for index in range(TEXT_LAYERS):
        layer = f"{text}encoder.layer.{index}."
        attended = attention(layer + "attention.self", h, h, additive)
        h = ln(layer + "attention.output.LayerNorm", lin(layer + "attention.output.dense", attended) + h)
        cross = layer + "crossattention."
        outs = [lin(f"{cross}output.dense{i}", attention(f"{cross}self{i}", h, images[i], None)) for i in (0, 1)]
        merged = (
            lin(layer + "crossattention.output.merge_layer", torch.cat(outs, dim=-1))
            if f"{layer}crossattention.output.merge_layer.weight" in state else (outs[0] + outs[1]) / 2
        )
        h = ln(layer + "crossattention.output.LayerNorm", merged + h)
        ffn = lin(layer + "output.dense", f.gelu(lin(layer + "intermediate.dense", h)))
        h = ln(layer + "output.LayerNorm", ffn + h)
    return lin("cls_head.2", f.relu(lin("cls_head.0", h[:, 0])))


def test_nlvr2_checkpoint_converts_and_matches_a_reference_forward_from_its_keys(tmp_path: Path) -> None:
    state = nlvr_original_state()
    assert source_kind(state) == "nlvr"
    checkpoint = save_checkpoint(tmp_path / "nlvr.pth", state)
    result = convert_blip_checkpoint(checkpoint, tmp_path / "out", nlvr_original_config(tmp_path), VOCAB)
    assert result.head == "nlvr2" and HEADS["nlvr2"].model_class == "VlpBlipForVisualReasoning"
    assert set(result.dropped) == {"text_encoder.embeddings.position_ids"}  # every other key is mapped
    model = VlpBlipForVisualReasoning.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert model.config.vision_config.drop_path_rate == 0.1  # as blip_nlvr.py builds the ViT
    assert model.config.text_config.enc_token_id == 65 and model.config.text_config.num_hidden_layers == 7
    layer6 = model.text_model.transformer.encoder.layers[6].cross_attn
    source = "text_encoder.encoder.layer.6.crossattention."
    assert torch.equal(layer6.merge.weight, state[source + "output.merge_layer.weight"])
    fused = torch.cat([state[f"{source}self1.{part}.weight"] for part in ("key", "value")])
    assert torch.equal(layer6.attn1.kv.weight, fused)
    inputs, _ = fixture_tensors()
    pixel_values = inputs["pixel_values"]
    pairs = torch.stack([pixel_values, pixel_values.roll(1, dims=0)], dim=1)
    with torch.no_grad():
        out = model(inputs["input_ids"], pairs, inputs["attention_mask"], output_hidden_states=True)
        images = (out.image_hidden_states[:, 0], out.image_hidden_states[:, 1])
        expected = reference_nlvr_logits(state, inputs["input_ids"], inputs["attention_mask"], images, 65)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    # the ViT tokens are the original ViT's (recorded by the fixture)
    torch.testing.assert_close(images[0], fixture_tensors()[1]["image_embeds"], atol=ATOL, rtol=0)


def test_nlvr2_layouts_that_do_not_fit_are_named(tmp_path: Path) -> None:
    config = nlvr_original_config(tmp_path)
    missing = nlvr_original_state()
    del missing["text_encoder.encoder.layer.6.crossattention.output.merge_layer.bias"]
    with pytest.raises(ConversionError, match=r"layers\.6\.cross_attn\.merge\.bias"):
        convert_blip_checkpoint(save_checkpoint(tmp_path / "a.pth", missing), None, config, VOCAB)
    half = nlvr_original_state()
    del half["text_encoder.encoder.layer.2.crossattention.self1.value.weight"]
    incomplete = r"incomplete fused tensors .*layers\.2\.cross_attn\.attn1\.kv\.weight"
    with pytest.raises(ConversionError, match=incomplete) as error:
        convert_blip_checkpoint(save_checkpoint(tmp_path / "b.pth", half), None, config, VOCAB)
    assert "read as a BLIP NLVR2 (models/blip_nlvr.py" in str(error.value) and "--head nlvr2" in str(error.value)
    with pytest.raises(ConversionError, match="--head model .* cannot be written from a BLIP NLVR2"):
        resolve_head("nlvr", "model")
