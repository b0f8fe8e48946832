"""VLMo benchmark: the paper's speed argument (a dual encoder for retrieval, a fusion encoder for the rest) and the
pre-training step against ALBEF, as ratios measured in one process.

1. Retrieval over a random gallery of ``--images`` images and ``--texts`` captions (default 1,000 x 5,000, five per
   image: Flickr30K's test split) with ``VlpVlmoForImageTextRetrieval`` of ``--preset``:
   - dual encoder: every image and every text encoded once (``encode_images``/``encode_texts``) and one similarity
     matrix (``score_matrices(k=None)``);
   - fusion encoder: every one of the N x M pairs through ``encode_fused`` + the ITM head (each image's patch
     embedding is made once, as ``encode_images`` keeps it; its cost, under 1 % of one fused pass, is not counted);
   - re-ranking (``score_matrices(k=16)``): the dual encoder plus the fused ITM of each query's top-k candidates,
     ``N k + M k`` fused pairs.
   Each round times one call of each kind: a chunk of ``--eval-batch`` images, a chunk of ``--eval-batch`` texts, a
   call of ``--fusion-batch`` fused pairs, the full-size N x M similarity matrix and the re-ranking's top-k/scatter
   bookkeeping over it (with the fusion left out). Gallery seconds are the per-item costs times the gallery counts
   (linear: the encoders and the fusion run in fixed-size chunks), so every round gives one gallery estimate per mode
   and the reported ratios (fusion/dual, rerank/dual) are medians of per-round ratios. All N x M fused passes are never
   run (at base size a fused pass costs about 42 GFLOPs: 2e17 FLOPs for the gallery); the fusion column is always an
   extrapolation of the measured per-pair cost, and the table says so. ``--full-dual`` also runs the dual pipeline over
   the whole gallery once, to check its extrapolation.
2. Pre-training: one step = forward with all losses + backward + AdamW step, ``VlpVlmoForPretraining`` (ITC twice,
   ITM on hard negatives with 3 B fused passes, MLM with B fused passes) against ``VlpAlbefForPretraining`` at equal
   width (ViT-B/16 + BERT-base, 768: ITC with momentum distillation against 65,536-entry queues, ITM, distilled MLM,
   + the momentum EMA), same images (VLMo's 224 px), same 40-token texts, same batch; samples/s, alternating in one
   process, ratio VLMo/ALBEF (above 1 = VLMo faster). Retrieval weights are cast to ``--dtype``; pre-training runs
   fp32 weights under ``--dtype`` autocast.

Before timing, on a 2-image x 2-text gallery in fp32: the chunked dual pipeline's similarities must equal
``model.rank(...).similarities``, the timed fused scoring in one batch must equal it pair by pair, and ``rank(k=1)``'s
re-ranked scores must equal the similarity plus those fused logits.

    python benchmarks/bench_vlmo.py --threads 1                  # CPU: base, 1000x5000 gallery, batch 2, 3 rounds
    python benchmarks/bench_vlmo.py --threads 2                  # torch's default here; noisier on a shared box
    python benchmarks/bench_vlmo.py --threads 1 --parts retrieval --images 100 --texts 500 --full-dual
    python benchmarks/bench_vlmo.py --parts retrieval --preset large
    python benchmarks/bench_vlmo.py --device cuda --dtype bf16 --batch 64 --eval-batch 256 --fusion-batch 128 \\
        --full-dual --rounds 10 --json out/bench_vlmo_gpu.json
    python benchmarks/bench_vlmo.py --smoke                      # tiny models, one round: a wiring check
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/bench_vlmo.py``
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.bench_albef import (  # noqa: E402
    CLS_TOKEN_ID,
    MASK_TOKEN_ID,
    SEP_TOKEN_ID,
    albef_config,
    autocast_context,
    random_albef_batch,
)
from benchmarks.common import (  # noqa: E402
    Summary,
    format_table,
    model_comparison_parser,
    parse_comparison_args,
    per_round_ratios,
    ratio_line,
    ratio_of_minimums,
    report,
    resolve_device,
    resolve_dtype,
    run_alternating,
    set_threads,
    synchronize,
    time_once,
)
from hf_vlp.models.albef import VlpAlbefConfig, VlpAlbefForPretraining  # noqa: E402
from hf_vlp.models.vlmo import (  # noqa: E402
    VLMO_PRESETS,
    VlpVlmoConfig,
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForPretraining,
)
from hf_vlp.objectives.contrastive import RetrievalFeatures, rerank_top_k  # noqa: E402
from hf_vlp.objectives.momentum import momentum_update  # noqa: E402

# a two-block VLMo (VL-FFN in the second) at ALBEF's smoke sizes: 32 px images of 2 x 2 patches, 200 words
SMOKE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vl_ffn_start_layer=1,
    image_size=32, patch_size=16, vocab_size=200, max_text_length=16, relative_position_text_length=16,
)
PRESETS = (*VLMO_PRESETS, "smoke")
CHECK_IMAGES, CHECK_TEXTS, CHECK_K = 2, 2, 1  # the gallery of the correctness check


def vlmo_config(preset: str) -> VlpVlmoConfig:
    """The released variant's config (``smoke``: the tiny one), checked to share bench_albef's special token ids."""
    config = VlpVlmoConfig(**SMOKE) if preset == "smoke" else VlpVlmoConfig.from_preset(preset)
    if (config.cls_token_id, config.sep_token_id, config.mask_token_id) != (CLS_TOKEN_ID, SEP_TOKEN_ID, MASK_TOKEN_ID):
        raise SystemExit("VLMo's special token ids differ from bench_albef's (bert-base-uncased): the batch is shared")
    return config


def albef_peer_config(preset: str, config: VlpVlmoConfig, queue_size: int | None = None) -> VlpAlbefConfig:
    """ALBEF's ``base`` (``smoke`` for the smoke preset) at VLMo's image size and patch: the width-matched peer of
    VLMo-Base; ``queue_size`` ``None`` keeps ALBEF's 65,536."""
    queue_size = VlpAlbefConfig().queue_size if queue_size is None else queue_size
    peer = albef_config("smoke" if preset == "smoke" else "base", queue_size)
    peer.vision_config.image_size, peer.vision_config.patch_size = config.image_size, config.patch_size
    if peer.text_config.vocab_size != config.vocab_size:
        raise SystemExit(f"ALBEF's vocabulary ({peer.text_config.vocab_size}) is not VLMo's ({config.vocab_size})")
    return peer


@functools.cache
def _peer_shapes(preset: str) -> VlpAlbefConfig:
    return albef_peer_config(preset, vlmo_config(preset))


def random_pairs(
    preset: str, count: int, text_length: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` random images at VLMo's resolution and ``[CLS] ids [SEP] [PAD]...`` captions of ``text_length``
    tokens with their mask: bench_albef's batch (both models read bert-base-uncased ids)."""
    return random_albef_batch(_peer_shapes(preset), count, text_length, seed)


def readable_seconds(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


# --------------------------------------------------------------------------------------------------- retrieval


@torch.no_grad()
def fused_match_logits(
    model: VlpVlmoForImageTextRetrieval,
    image_tokens: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """ITM match logits ``[P]`` of the pairs (image_tokens[p], text p): the fusion encoder's score of a pair, the
    computation ``score_matrices`` re-ranks with."""
    fused = model.vlmo.encode_fused(input_ids, attention_mask, image_tokens=image_tokens)
    return model.itm_head(fused.pooler_output)[:, 1]


def encode_chunked(
    model: VlpVlmoForImageTextRetrieval,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunk: int,
) -> tuple[RetrievalFeatures, RetrievalFeatures]:
    """The dual encoder's gallery features, encoded ``chunk`` items per call as the benchmark times them."""
    images = [model.encode_images(pixel_values[i : i + chunk]) for i in range(0, len(pixel_values), chunk)]
    texts = [
        model.encode_texts(input_ids[i : i + chunk], attention_mask[i : i + chunk])
        for i in range(0, len(input_ids), chunk)
    ]
    return RetrievalFeatures.cat(images), RetrievalFeatures.cat(texts)


def check_retrieval(model: VlpVlmoForImageTextRetrieval, args: argparse.Namespace) -> dict[str, float]:
    """fp32 proof that the timed computations are the model's: the chunked dual pipeline against ``model.rank``,
    fused logits of every pair in one batch against pair by pair, and ``rank(k)``'s re-ranked entries against
    similarity + those logits. Raises ``SystemExit`` (nothing timed) past 1e-4; returns the differences."""
    pixel_values, input_ids, attention_mask = random_pairs(args.preset, CHECK_TEXTS, args.text_length, args.seed + 1)
    pixel_values = pixel_values[:CHECK_IMAGES]
    reference = model.rank(pixel_values, input_ids, attention_mask, k=CHECK_K, batch_size=1)
    images, texts = encode_chunked(model, pixel_values, input_ids, attention_mask, chunk=1)
    similarities = model.score_matrices(images, texts).similarities
    image_index = torch.arange(CHECK_IMAGES).repeat_interleave(CHECK_TEXTS)
    text_index = torch.arange(CHECK_TEXTS).repeat(CHECK_IMAGES)
    batched = fused_match_logits(
        model, images.hidden_states[image_index], input_ids[text_index], attention_mask[text_index]
    ).view(CHECK_IMAGES, CHECK_TEXTS)
    one_by_one = torch.stack([
        fused_match_logits(model, images.hidden_states[i : i + 1], input_ids[t : t + 1], attention_mask[t : t + 1])[0]
        for i, t in zip(image_index.tolist(), text_index.tolist())
    ]).view(CHECK_IMAGES, CHECK_TEXTS)
    reranked = reference.image_to_text != -100.0
    if int(reranked.sum()) != CHECK_IMAGES * CHECK_K:
        raise SystemExit(f"rank(k={CHECK_K}) re-ranked {int(reranked.sum())} texts, expected {CHECK_IMAGES * CHECK_K}")
    differences = {
        "dual_vs_rank": float((similarities - reference.similarities).abs().max()),
        "fused_batch_vs_one_by_one": float((batched - one_by_one).abs().max()),
        "rerank_vs_similarity_plus_fused": float(
            (reference.image_to_text[reranked] - (reference.similarities + batched)[reranked]).abs().max()
        ),
    }
    failed = {name: value for name, value in differences.items() if not value <= 1e-4}
    if failed:
        raise SystemExit(f"retrieval check failed in fp32 (max |difference| > 1e-4): {failed}; nothing was timed.")
    return differences


def retrieval_steps(
    model: VlpVlmoForImageTextRetrieval, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> dict[str, Callable[[], Any]]:
    """One call of each kind a gallery evaluation repeats (see the module docstring), on device-resident inputs."""
    config = model.config
    pixel_values, input_ids, attention_mask = (
        tensor.to(device) for tensor in random_pairs(args.preset, args.eval_batch, args.text_length, args.seed)
    )
    pixel_values = pixel_values.to(dtype)
    image_tokens = model.encode_images(pixel_values).hidden_states
    generator = torch.Generator().manual_seed(args.seed)
    image_index = torch.randint(args.eval_batch, (args.fusion_batch,), generator=generator).to(device)
    text_index = torch.randint(args.eval_batch, (args.fusion_batch,), generator=generator).to(device)

    def unit_rows(count: int) -> RetrievalFeatures:
        rows = torch.randn(count, config.hidden_size, generator=generator)
        return RetrievalFeatures(torch.nn.functional.normalize(rows, dim=-1).to(device=device, dtype=dtype))

    gallery_images, gallery_texts = unit_rows(args.images), unit_rows(args.texts)  # the product's cost ignores values
    similarities = model.score_matrices(gallery_images, gallery_texts).similarities

    def no_fusion(image_indices: torch.Tensor, text_indices: torch.Tensor) -> torch.Tensor:
        return similarities.new_zeros(image_indices.shape[0])

    return {
        "encode_images": lambda: model.encode_images(pixel_values),
        "encode_texts": lambda: model.encode_texts(input_ids, attention_mask),
        "similarity": lambda: model.score_matrices(gallery_images, gallery_texts),
        "fused_pairs": lambda: fused_match_logits(
            model, image_tokens[image_index], input_ids[text_index], attention_mask[text_index]
        ),
        "rerank_bookkeeping": lambda: rerank_top_k(
            similarities, no_fusion, args.k, add_similarity=True, batch_size=args.rerank_batch
        ),
    }


def rerank_pairs(images: int, texts: int, k: int) -> int:
    """Fused pairs of a top-``k`` re-ranking in both directions."""
    return images * min(k, texts) + texts * min(k, images)


def gallery_seconds(times: dict[str, list[float]], args: argparse.Namespace) -> dict[str, list[float]]:
    """Per round, the seconds of the whole gallery each way: per-item costs of that round times the gallery counts,
    plus the full-size product (dual) and bookkeeping (re-rank) measured in that round."""
    per_image = [t / args.eval_batch for t in times["encode_images"]]
    per_text = [t / args.eval_batch for t in times["encode_texts"]]
    per_pair = [t / args.fusion_batch for t in times["fused_pairs"]]
    dual = [
        args.images * image + args.texts * text + product
        for image, text, product in zip(per_image, per_text, times["similarity"])
    ]
    reranked = rerank_pairs(args.images, args.texts, args.k)
    return {
        "dual": dual,
        "fusion": [args.images * args.texts * pair for pair in per_pair],
        "rerank": [
            seconds + bookkeeping + reranked * pair
            for seconds, bookkeeping, pair in zip(dual, times["rerank_bookkeeping"], per_pair)
        ],
    }


def full_dual_seconds(
    model: VlpVlmoForImageTextRetrieval, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> float:
    """The dual pipeline over the whole gallery, run once: every chunk encoded (random inputs made before each timed
    call), the features joined and one ``score_matrices(k=None)``."""
    seconds, image_chunks, text_chunks = 0.0, [], []
    for start in range(0, max(args.images, args.texts), args.eval_batch):
        pixel_values, input_ids, attention_mask = (
            tensor.to(device)
            for tensor in random_pairs(args.preset, args.eval_batch, args.text_length, args.seed + start)
        )
        if start < args.images:
            images = pixel_values[: args.images - start].to(dtype)
            seconds += time_once(lambda: image_chunks.append(model.encode_images(images)), device)
        if start < args.texts:
            ids, mask = input_ids[: args.texts - start], attention_mask[: args.texts - start]
            seconds += time_once(lambda: text_chunks.append(model.encode_texts(ids, mask)), device)
    seconds += time_once(
        lambda: model.score_matrices(RetrievalFeatures.cat(image_chunks), RetrievalFeatures.cat(text_chunks)), device
    )
    return seconds


def bench_retrieval(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    config = vlmo_config(args.preset)
    torch.manual_seed(args.seed)
    model = VlpVlmoForImageTextRetrieval(config).eval()
    differences = check_retrieval(model, args)
    print(f"[{args.preset}] fp32 retrieval checks pass: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()))
    model.to(device=device, dtype=dtype)
    results = []
    for kernel in args.ours_attn:
        model.set_attn_implementation(kernel)
        times = run_alternating(
            retrieval_steps(model, args, device, dtype), warmup=args.warmup, rounds=args.rounds, device=device
        )
        gallery = gallery_seconds(times, args)
        ratios = {
            mode: Summary.of(per_round_ratios(gallery[mode], gallery["dual"])) for mode in ("fusion", "rerank")
        }
        label = f"{args.preset} retrieval {args.images}x{args.texts} attn-{kernel}"
        print(ratio_line(label, "fusion", "dual", ratios["fusion"], "gallery time"))
        print(ratio_line(f"{label} k={args.k}", "rerank", "dual", ratios["rerank"], "gallery time"))
        medians = {name: Summary.of(seconds).median for name, seconds in times.items()}
        result = {
            "preset": args.preset,
            "attention": kernel,
            "images": args.images,
            "texts": args.texts,
            "k": args.k,
            "text_length": args.text_length,
            "eval_batch": args.eval_batch,
            "fusion_batch": args.fusion_batch,
            "rerank_batch": args.rerank_batch,
            "fused_pairs_gallery": args.images * args.texts,
            "fused_pairs_rerank": rerank_pairs(args.images, args.texts, args.k),
            "seconds_per_image": medians["encode_images"] / args.eval_batch,
            "seconds_per_text": medians["encode_texts"] / args.eval_batch,
            "seconds_per_fused_pair": medians["fused_pairs"] / args.fusion_batch,
            "similarity_seconds_full_size": medians["similarity"],
            "rerank_bookkeeping_seconds_full_size": medians["rerank_bookkeeping"],
            "gallery_seconds": {mode: Summary.of(seconds).to_dict() for mode, seconds in gallery.items()},
            "gallery_seconds_how": {
                "dual": "per-image and per-text cost x counts (extrapolated) + the full-size product (measured)",
                "fusion": "per-pair cost x images x texts (extrapolated; never run in full)",
                "rerank": "dual + full-size bookkeeping (measured) + per-pair cost x re-ranked pairs (extrapolated)",
            },
            "ratio_fusion_over_dual": ratios["fusion"].to_dict(),
            "ratio_rerank_over_dual": ratios["rerank"].to_dict(),
            "ratio_of_minimums_fusion_over_dual": ratio_of_minimums(gallery["fusion"], gallery["dual"]),
            "max_difference_fp32": differences,
            "call_ms": {name: Summary.of(seconds).scaled(1e3).to_dict() for name, seconds in times.items()},
            "raw_seconds": times,
        }
        if args.full_dual:
            measured = full_dual_seconds(model, args, device, dtype)
            result["full_dual_seconds_measured"] = measured
            print(f"{label}: dual pipeline over the whole gallery measured {measured:.2f} s "
                  f"(extrapolated {Summary.of(gallery['dual']).median:.2f} s)")
        results.append(result)
    return results


def retrieval_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        gallery = {mode: summary["median"] for mode, summary in result["gallery_seconds"].items()}
        n, m, k = result["images"], result["texts"], result["k"]
        tag = f"{result['preset']} {result['attention']}"
        rows += [
            [tag, "dual encoder", f"{n} images + {m} texts once, one {n}x{m} product",
             f"{1e3 * result['seconds_per_image']:.1f} ms/image, {1e3 * result['seconds_per_text']:.1f} ms/text "
             f"(chunks of {result['eval_batch']}); product {result['similarity_seconds_full_size']:.3f} s (full size)",
             readable_seconds(gallery["dual"]), "extrapolated from chunks"],
            [tag, "fusion encoder", f"{n * m:,} fused pairs + ITM",
             f"{1e3 * result['seconds_per_fused_pair']:.1f} ms/pair ({result['fusion_batch']} pairs per call)",
             readable_seconds(gallery["fusion"]), "extrapolated: never run in full"],
            [tag, f"dual + re-rank top-{k}", f"dual + {result['fused_pairs_rerank']:,} fused pairs",
             f"top-k/scatter {result['rerank_bookkeeping_seconds_full_size']:.3f} s (full size)",
             readable_seconds(gallery["rerank"]), "extrapolated"],
        ]
        if "full_dual_seconds_measured" in result:
            rows.append([tag, "dual encoder", "the same, run end to end", "",
                         readable_seconds(result["full_dual_seconds_measured"]), "measured"])
        fusion, rerank = result["ratio_fusion_over_dual"]["median"], result["ratio_rerank_over_dual"]["median"]
        rows.append([tag, "ratios", "fusion/dual; rerank/dual (per-round medians)", "", f"{fusion:.1f}; {rerank:.2f}",
                     ""])
    headers = ["preset attn", "mode", "what the gallery costs", "measured per call", "gallery time", "how"]
    return format_table(headers, rows)


# --------------------------------------------------------------------------------------------------- pre-training


def training_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    after_step: Callable[[], None] | None = None,
) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """One optimisation step of a pre-training head: forward with every loss (under ``dtype`` autocast), backward,
    AdamW on the trainable parameters, then ``after_step`` (ALBEF's momentum EMA). Also returns the list the step
    appends its loss to. Sampling (hard negatives, masking) reads one seeded CPU generator on any device (the draws
    run on the CPU)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    losses: list[torch.Tensor] = []

    def step() -> torch.Tensor:
        with autocast_context(device, dtype):
            loss = model(**batch, return_loss=True, generator=generator).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        losses.append(loss.detach())
        return losses[-1]

    return step, losses


def bench_pretraining(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    config = vlmo_config(args.preset)
    peer_config = albef_peer_config(args.preset, config, args.queue_size)
    if peer_config.vision_config.hidden_size != config.hidden_size:
        raise SystemExit(f"no ALBEF of VLMo-{args.preset}'s width {config.hidden_size}; pre-train base or smoke")
    pixel_values, input_ids, attention_mask = random_pairs(args.preset, args.batch, args.text_length, args.seed)
    batch = dict(pixel_values=pixel_values.to(device), input_ids=input_ids.to(device),
                 attention_mask=attention_mask.to(device))
    torch.manual_seed(args.seed)
    vlmo = VlpVlmoForPretraining(config).to(device).train()
    albef = VlpAlbefForPretraining(peer_config).to(device).train()
    albef.freeze_momentum()
    ema = functools.partial(momentum_update, albef.momentum_pairs(), albef.momentum)
    albef_step, albef_losses = training_step(albef, batch, device, dtype, args.seed, ema)
    parameters = {
        name: sum(p.numel() for p in model.parameters() if p.requires_grad)
        for name, model in (("vlmo", vlmo), ("albef", albef))
    }
    results = []
    for kernel in args.ours_attn:
        vlmo.set_attn_implementation(kernel)
        vlmo_step, vlmo_losses = training_step(vlmo, batch, device, dtype, args.seed)
        times = run_alternating(
            {"vlmo": vlmo_step, "albef": albef_step}, warmup=args.warmup, rounds=args.rounds, device=device
        )
        synchronize(device)
        final = {"vlmo": float(vlmo_losses[-1]), "albef": float(albef_losses[-1])}
        if not all(torch.isfinite(torch.tensor(list(final.values())))):
            raise SystemExit(f"a pre-training loss is not finite: {final}")
        ratios = Summary.of(per_round_ratios(times["albef"], times["vlmo"]))
        rates = {name: args.batch / Summary.of(seconds).median for name, seconds in times.items()}
        print(ratio_line(f"{args.preset} pretrain attn-{kernel}", "vlmo", "albef", ratios, "samples/s"))
        results.append({
            "preset": args.preset,
            "attention": kernel,
            "albef_attention": albef.config._attn_implementation,
            "batch": args.batch,
            "image_size": config.image_size,
            "text_length": args.text_length,
            "albef_queue_size": peer_config.queue_size,
            "width": config.hidden_size,
            "trainable_parameters": parameters,
            "samples_per_second": rates,
            "step_ms": {name: Summary.of(seconds).scaled(1e3).to_dict() for name, seconds in times.items()},
            "ratio_samples_per_second_vlmo_over_albef": ratios.to_dict(),
            "ratio_of_minimums": ratio_of_minimums(times["albef"], times["vlmo"]),
            "final_loss": final,
            "raw_seconds": times,
        })
    return results


def pretraining_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        rates, steps = result["samples_per_second"], result["step_ms"]
        ratio = result["ratio_samples_per_second_vlmo_over_albef"]
        rows.append([
            result["preset"], result["attention"], result["batch"],
            f"{result['image_size']} px, {result['text_length']}",
            f"{rates['vlmo']:.3f}", f"{rates['albef']:.3f}", f"{ratio['median']:.3f}",
            f"{ratio['q1']:.3f}-{ratio['q3']:.3f}", f"{steps['vlmo']['median'] / 1e3:.2f}",
            f"{steps['albef']['median'] / 1e3:.2f}",
        ])
    headers = ["preset", "VLMo attn", "batch", "image, tokens", "VLMo samples/s", "ALBEF samples/s",
               "ratio VLMo/ALBEF", "ratio IQR", "VLMo step s", "ALBEF step s"]
    return format_table(headers, rows)


# --------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = model_comparison_parser(__doc__.split("\n\n")[0], PRESETS, "base", 2, "pre-training pairs")
    parser.set_defaults(rounds=3)
    parser.add_argument("--parts", nargs="+", choices=("retrieval", "pretrain"), default=["retrieval", "pretrain"])
    parser.add_argument("--images", type=int, default=1000, help="retrieval gallery images")
    parser.add_argument("--texts", type=int, default=5000, help="retrieval gallery captions (5 per image)")
    parser.add_argument("--k", type=int, default=16, help="candidates re-ranked per query by the fused ITM")
    parser.add_argument("--rerank-batch", type=int, default=8, help="queries re-ranked per fusion call")
    parser.add_argument("--eval-batch", type=int, default=4, help="images (texts) per timed encode call")
    parser.add_argument("--fusion-batch", type=int, default=4, help="image-text pairs per timed fusion call")
    parser.add_argument("--text-length", type=int, default=None, help="tokens per text (default: VLMo's 40)")
    parser.add_argument("--queue-size", type=int, default=None, help="ALBEF's feature queues (default 65536)")
    parser.add_argument(
        "--full-dual", action="store_true",
        help="also run the dual pipeline over the whole gallery once (base, 1000x5000: ~20 min on 2 CPU cores)",
    )
    args = parse_comparison_args(parser, argv)
    if args.smoke:
        args.images, args.texts, args.k, args.rerank_batch, args.eval_batch, args.fusion_batch = 4, 20, 4, 2, 4, 4
        args.queue_size, args.full_dual = 8, True
    positive = (args.images, args.texts, args.k, args.rerank_batch, args.eval_batch, args.fusion_batch)
    if min(positive) < 1:
        parser.error("--images, --texts, --k, --rerank-batch, --eval-batch and --fusion-batch must be positive")
    longest = vlmo_config(args.preset).max_text_length
    args.text_length = longest if args.text_length is None else args.text_length
    if not 3 <= args.text_length <= longest:
        parser.error(f"--text-length must lie in [3, {longest}] (VLMo's max_text_length)")
    if "pretrain" in args.parts:
        if args.preset not in ("base", "smoke"):
            parser.error("--parts pretrain compares with ALBEF at equal width: only --preset base (or smoke)")
        if args.batch < 2:
            parser.error("--batch must be at least 2 (ITM draws each pair's negative from the rest of the batch)")
        queue = VlpAlbefConfig().queue_size if args.queue_size is None else args.queue_size
        if queue < 1 or queue % args.batch:
            parser.error(f"ALBEF's queue ({queue}) must be a positive multiple of --batch {args.batch}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    threads = set_threads(args.threads)
    print(f"bench_vlmo: device {device}, dtype {args.dtype}, threads {threads}, preset {args.preset}, parts "
          f"{' '.join(args.parts)}, {args.text_length} text tokens, rounds {args.rounds}")
    results: dict[str, Any] = {}
    tables = []
    if "retrieval" in args.parts:
        results["retrieval"] = bench_retrieval(args, device, dtype)
        tables.append(retrieval_table(results["retrieval"]))
    if "pretrain" in args.parts:
        results["pretrain"] = bench_pretraining(args, device, dtype)
        tables.append(pretraining_table(results["pretrain"]))
    return report("bench_vlmo", device, args, "\n\n".join(tables), **results)


if __name__ == "__main__":
    main()
