"""ALBEF benchmark: pre-training step throughput and peak memory, and retrieval evaluation time.

1. Pre-training: one step = ``VlpAlbefForPretraining`` forward with all three losses (ITC with momentum
   distillation against the queues, ITM on hard negatives, distilled MLM) + backward + AdamW step + the momentum EMA
   (``hf_vlp.objectives.momentum.momentum_update``). Reported as samples/s (median over rounds, ``run_alternating``) and peak
   memory: ``torch.cuda.max_memory_allocated`` on GPU, the growth of the process's peak RSS (``ru_maxrss``) over
   the steps on CPU (tracemalloc does not see torch's allocations).
2. Retrieval: a random gallery of ``--images`` images and ``--texts`` captions through
   ``VlpAlbefForImageTextRetrieval``: encoding (chunked ``encode_images``/``encode_texts``), the ITC similarity with
   the top-``k`` selection of both directions, and ``score_matrices`` whose ITM re-rank time is its total minus the
   ITC part (``--rerank-batch`` queries re-ranked per fusion call). Base size takes hours on a 2-core CPU, so the
   CPU default is the ``small`` preset (see ``PRESETS``).

There is no other ALBEF implementation in transformers to compare with: the numbers are absolute.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/bench_albef.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Summary,
    machine_description,
    resolve_device,
    resolve_dtype,
    run_alternating,
    set_threads,
    synchronize,
    time_once,
    write_json,
)
from hf_vlp.models.albef.configuration_albef import VlpAlbefConfig  # noqa: E402
from hf_vlp.models.albef import (  # noqa: E402
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForPretraining,
    VlpAlbefRetrievalFeatures,
)
from hf_vlp.objectives.momentum import momentum_update  # noqa: E402

CLS_TOKEN_ID, SEP_TOKEN_ID, MASK_TOKEN_ID = 101, 102, 103  # bert-base-uncased, as the original ALBEF tokenizer

# overrides of VlpAlbefConfig() (ViT-B/16 at 256 px + BERT-base with 6 text and 6 fusion layers, embed 256)
PRESETS: dict[str, dict[str, Any]] = {
    "base": {},
    # ~1/6 of base's width and a third of its depth, 128 px: a 1k x 5k gallery evaluates in minutes on 2 cores
    "small": dict(
        embed_dim=128,
        vision_config=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2, image_size=128
        ),
        text_config=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2, fusion_layer=2
        ),
    ),
    "smoke": dict(
        embed_dim=16,
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=16,
        ),
        text_config=dict(
            vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            fusion_layer=1, max_position_embeddings=64,
        ),
    ),
}


def albef_config(preset: str, queue_size: int) -> VlpAlbefConfig:
    """``VlpAlbefConfig`` of a preset with the given queue and BERT's special token ids (MLM masking needs them)."""
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    overrides = PRESETS[preset]
    text = {**overrides.get("text_config", {}), "cls_token_id": CLS_TOKEN_ID, "mask_token_id": MASK_TOKEN_ID}
    other = {key: value for key, value in overrides.items() if key not in ("text_config", "vision_config")}
    return VlpAlbefConfig(
        vision_config=overrides.get("vision_config", {}), text_config=text, queue_size=queue_size, **other
    )


def random_albef_batch(
    config: VlpAlbefConfig, batch: int, text_length: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images and ``[CLS] tokens... [SEP] [PAD]...`` rows with a random length, and their padding mask."""
    vision, text = config.vision_config, config.text_config
    if text_length < 3 or text_length > text.max_position_embeddings:
        raise SystemExit(f"--text-length must lie in [3, {text.max_position_embeddings}], got {text_length}")
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    low = MASK_TOKEN_ID + 1 if text.vocab_size > MASK_TOKEN_ID + 1 else 1
    input_ids = torch.randint(low, text.vocab_size, (batch, text_length), generator=generator)
    ends = torch.randint(2, text_length, (batch,), generator=generator)  # position of [SEP]
    positions = torch.arange(text_length)[None, :]
    input_ids[:, 0] = CLS_TOKEN_ID
    input_ids = torch.where(positions == ends[:, None], torch.full_like(input_ids, SEP_TOKEN_ID), input_ids)
    attention_mask = (positions <= ends[:, None]).long()
    input_ids = input_ids * attention_mask  # pad id 0 after [SEP]
    return pixel_values, input_ids, attention_mask


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------- pre-training


def make_pretraining_step(
    model: VlpAlbefForPretraining,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[], torch.Tensor]:
    """One full step: three-loss forward, backward, AdamW, EMA of the momentum towers."""
    pixel_values, input_ids, attention_mask = batch
    pairs = model.momentum_pairs()

    def step() -> torch.Tensor:
        with autocast_context(device, dtype):
            output = model(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True
            )
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        momentum_update(pairs, model.momentum)
        return output.loss.detach()

    return step


def bench_pretraining(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    config = albef_config(args.pretrain_preset, args.queue_size)
    torch.manual_seed(args.seed)
    model = VlpAlbefForPretraining(config).to(device).train()
    model.freeze_momentum()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.02, fused=device.type == "cuda")
    batch = tuple(t.to(device) for t in random_albef_batch(config, args.batch, args.text_length, args.seed))
    step = make_pretraining_step(model, optimizer, batch, device, dtype)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_mib()
    times = run_alternating({"pretrain": step}, warmup=args.warmup, rounds=args.rounds, device=device)["pretrain"]
    synchronize(device)
    if device.type == "cuda":
        peak_mib, memory_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    else:
        peak_mib, memory_kind = peak_rss_mib() - rss_before, "peak RSS growth over the steps"
    final_loss = float(step())
    if not torch.isfinite(torch.tensor(final_loss)):
        raise SystemExit(f"pre-training loss is not finite after {args.warmup + args.rounds + 1} steps: {final_loss}")

    step_seconds = Summary.of(times)
    samples_per_second = args.batch / step_seconds.median
    parameters = sum(p.numel() for p in trainable)
    print(
        f"pretrain {args.pretrain_preset} samples/s = {samples_per_second:.3f} "
        f"(step {1e3 * step_seconds.median:.0f} ms, IQR {1e3 * step_seconds.q1:.0f}-{1e3 * step_seconds.q3:.0f}, "
        f"n={step_seconds.n}; batch {args.batch}, {parameters / 1e6:.1f}M trainable parameters)"
    )
    print(f"pretrain {args.pretrain_preset} peak memory MiB = {peak_mib:.0f} ({memory_kind}); loss {final_loss:.3f}")
    return {
        "preset": args.pretrain_preset,
        "config": config.to_dict(),
        "batch": args.batch,
        "trainable_parameters": parameters,
        "step_ms": step_seconds.scaled(1e3).to_dict(),
        "samples_per_second": samples_per_second,
        "peak_memory_mib": peak_mib,
        "peak_memory_kind": memory_kind,
        "final_loss": final_loss,
        "raw_seconds": times,
    }


# --------------------------------------------------------------------------------------------------- retrieval


def encode_gallery(
    model: VlpAlbefForImageTextRetrieval,
    config: VlpAlbefConfig,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[VlpAlbefRetrievalFeatures, VlpAlbefRetrievalFeatures, float, float]:
    """Encode random images and captions chunk by chunk; returns the features and the two encoding times."""
    image_chunks, text_chunks, image_seconds, text_seconds = [], [], 0.0, 0.0
    for start in range(0, args.images, args.eval_batch):
        size = min(args.eval_batch, args.images - start)
        pixel_values = random_albef_batch(config, size, 3, args.seed + start)[0].to(device)
        synchronize(device)
        began = time.perf_counter()
        image_chunks.append(model.encode_images(pixel_values))
        synchronize(device)
        image_seconds += time.perf_counter() - began
    for start in range(0, args.texts, args.eval_batch):
        size = min(args.eval_batch, args.texts - start)
        _, input_ids, attention_mask = random_albef_batch(config, size, args.text_length, args.seed + start)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        synchronize(device)
        began = time.perf_counter()
        text_chunks.append(model.encode_texts(input_ids, attention_mask))
        synchronize(device)
        text_seconds += time.perf_counter() - began
    images, texts = VlpAlbefRetrievalFeatures.cat(image_chunks), VlpAlbefRetrievalFeatures.cat(text_chunks)
    return images, texts, image_seconds, text_seconds


def bench_retrieval(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    config = albef_config(args.preset, args.queue_size)  # the queue is unused at inference
    torch.manual_seed(args.seed)
    model = VlpAlbefForImageTextRetrieval(config).to(device).eval()
    with autocast_context(device, dtype):
        images, texts, encode_images_s, encode_texts_s = encode_gallery(model, config, args, device)

        def itc_similarity() -> None:
            similarities = images.embeds @ texts.embeds.T
            similarities.topk(min(args.k, args.texts), dim=1)
            similarities.topk(min(args.k, args.images), dim=0)

        itc_s = time_once(itc_similarity, device)
        scores = None

        def score() -> None:
            nonlocal scores
            scores = model.score_matrices(
                images, texts, k=args.k, fill_value=args.fill_value, batch_size=args.rerank_batch
            )

        score_s = time_once(score, device)
    assert scores is not None
    reranked_per_image = (scores.image_to_text != args.fill_value).sum(dim=1)
    if int(reranked_per_image.min()) != min(args.k, args.texts):
        raise SystemExit(f"ITM re-ranked {reranked_per_image.tolist()[:8]}... texts per image, expected k={args.k}")
    itm_s = max(score_s - itc_s, 0.0)
    total_s = encode_images_s + encode_texts_s + score_s
    fusions = args.images * min(args.k, args.texts) + args.texts * min(args.k, args.images)
    print(
        f"retrieval {args.preset} gallery {args.images}x{args.texts} k={args.k}: "
        f"encode_images_s = {encode_images_s:.2f}, encode_texts_s = {encode_texts_s:.2f}, "
        f"itc_similarity_s = {itc_s:.3f}, itm_rerank_s = {itm_s:.2f}, total_s = {total_s:.2f} "
        f"({fusions} ITM pairs, {fusions / max(itm_s, 1e-9):.0f} pairs/s)"
    )
    return {
        "preset": args.preset,
        "config": config.to_dict(),
        "images": args.images,
        "texts": args.texts,
        "k": args.k,
        "rerank_batch": args.rerank_batch,
        "text_length": args.text_length,
        "eval_batch": args.eval_batch,
        "encode_images_s": encode_images_s,
        "encode_texts_s": encode_texts_s,
        "itc_similarity_s": itc_s,
        "score_matrices_s": score_s,
        "itm_rerank_s": itm_s,
        "itm_pairs": fusions,
        "total_s": total_s,
    }


# --------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="fp32", help="fp32, or bf16/fp16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--parts", nargs="+", choices=("pretrain", "retrieval"), default=["pretrain", "retrieval"])
    parser.add_argument("--pretrain-preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--batch", type=int, default=None, help="pre-training pairs per step (default: 2 CPU, 64 GPU)")
    parser.add_argument("--queue-size", type=int, default=None, help="ITC queue (default: 64 CPU, 65536 GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed pre-training steps")
    parser.add_argument("--rounds", type=int, default=None, help="timed pre-training steps (default: 3 CPU, 20 GPU)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="retrieval model (default: small CPU, base GPU)"
    )
    parser.add_argument("--images", type=int, default=1000, help="retrieval gallery images")
    parser.add_argument("--texts", type=int, default=5000, help="retrieval gallery captions")
    parser.add_argument("--k", type=int, default=16, help="candidates re-ranked by ITM per query")
    parser.add_argument(
        "--rerank-batch", type=int, default=8, help="queries whose k candidates one ITM fusion call scores"
    )
    parser.add_argument("--eval-batch", type=int, default=64, help="gallery items encoded per call")
    parser.add_argument("--text-length", type=int, default=30, help="tokens per caption (the original pads to 30)")
    parser.add_argument("--fill-value", type=float, default=-100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny config, tiny gallery: checks the wiring in seconds")
    args = parser.parse_args(argv)
    on_gpu = torch.device(args.device).type == "cuda"
    defaults = dict(batch=64, queue_size=65536, rounds=20, preset="base") if on_gpu else dict(
        batch=2, queue_size=64, rounds=3, preset="small"
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.pretrain_preset, args.preset, args.batch, args.queue_size = "smoke", "smoke", 2, 8
        args.warmup, args.rounds, args.images, args.texts, args.k, args.eval_batch = 1, 2, 6, 15, 4, 4
    if args.batch < 2:
        parser.error("--batch must be at least 2 (in-batch hard negatives need another pair)")
    if args.queue_size % args.batch:
        parser.error(f"--queue-size {args.queue_size} must be a multiple of --batch {args.batch}")
    positive = (args.rounds, args.k, args.images, args.texts, args.eval_batch, args.rerank_batch)
    if args.warmup < 0 or min(positive) < 1:
        parser.error(
            "--rounds, --k, --images, --texts, --eval-batch and --rerank-batch must be positive, --warmup non-negative"
        )
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype)
    threads = set_threads(args.threads)
    print(f"bench_albef on {device} ({args.dtype}), threads {threads}, parts {' '.join(args.parts)}")
    payload: dict[str, Any] = {
        "benchmark": "bench_albef",
        "machine": machine_description(device),
        "settings": {key: value for key, value in vars(args).items() if key != "json_path"},
    }
    if "pretrain" in args.parts:
        payload["pretrain"] = bench_pretraining(args, device, dtype)
    if "retrieval" in args.parts:
        payload["retrieval"] = bench_retrieval(args, device, dtype)
    if args.json_path:
        print(f"wrote {write_json(args.json_path, payload)}")
    return payload


if __name__ == "__main__":
    main()
