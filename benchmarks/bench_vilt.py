"""ViLT VQA inference throughput: hf_vlp's ``VlpViltForQuestionAnswering`` against transformers'
``ViltForQuestionAnswering`` with identical weights.

A random transformers VQA model is saved and converted with ``conversion/convert_vilt.py``; both answer the same batch
of 384 x 384 images (12 x 12 patches of 32 px, every patch kept) with 40-token questions, and their logits must agree
(fp32, checked before timing). Timing alternates the two models in one process (``benchmarks/common.py``) and reports
samples/s (batch / median call time) and the median per-round throughput ratio hf_vlp/transformers (above 1 = ours
faster; the time ratio ours/theirs is its inverse).

    python benchmarks/bench_vilt.py                              # CPU fp32: ViLT-B/32, batch 4
    python benchmarks/bench_vilt.py --device cuda --dtype bf16 --batch 256 --json out/bench_vilt.json
    python benchmarks/bench_vilt.py --smoke                      # tiny model, one round: a wiring check

Reference for the GPU mode: transformers' model answers 1,828 samples/s on one H100 (bf16, batch 256, 40 tokens).
Where the time goes: both run the same 12 blocks over 185 tokens. Ours fuses q/k/v into one projection and runs SDPA;
transformers' ViLT runs three projections and eager attention, and draws a random patch order per image with
``torch.multinomial`` that ours does not need (the token order does not change any output).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/bench_vilt.py``
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

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
)

TEXT_LENGTH = 40  # ViLT's max_text_len: every question is padded to 40 tokens


def _sizes(width: int, heads: int, layers: int, image_size: int, patch: int, vocab: int, labels: int) -> dict[str, Any]:
    return dict(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
        image_size=image_size, patch_size=patch, vocab_size=vocab, num_labels=labels,
    )


# transformers ViltConfig sizes. "base": the released ViLT-B/32 VQA model (384 px, 30,522 words, 3,129 answers);
# "smoke": a wiring check.
PRESETS: dict[str, dict[str, Any]] = {
    "base": _sizes(768, 12, 12, 384, 32, 30522, 3129),
    "smoke": _sizes(32, 2, 1, 64, 16, 99, 10),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = model_comparison_parser(__doc__.split("\n\n")[0], PRESETS, "base", 4, "(image, question) pairs")
    return parse_comparison_args(parser, argv)


def transformers_vqa_model(preset: str, seed: int) -> Any:
    """A random transformers ``ViltForQuestionAnswering`` of ``preset`` (ViLT's dropouts, eval mode)."""
    from transformers import ViltConfig, ViltForQuestionAnswering

    sizes = PRESETS[preset]
    config = ViltConfig(**sizes, max_position_embeddings=TEXT_LENGTH, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return ViltForQuestionAnswering(config).eval()


def convert(theirs: Any) -> Any:
    """hf_vlp's VQA model with ``theirs``' exact weights, through ``conversion/convert_vilt.py``."""
    from transformers.utils import logging as transformers_logging

    from conversion.vilt_transformers import convert_transformers_vilt

    logging.getLogger("conversion.vilt").setLevel(logging.ERROR)  # "no tokenizer" is expected: weights only
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as directory:
        theirs.save_pretrained(directory)
        return convert_transformers_vilt(directory).model.eval()


def random_batch(preset: str, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Full-size images (every patch real) and 40-token questions, the last third padding."""
    sizes = PRESETS[preset]
    generator = torch.Generator().manual_seed(seed)
    size = sizes["image_size"]
    input_ids = torch.randint(1000 % sizes["vocab_size"], sizes["vocab_size"], (batch, TEXT_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:, 2 * TEXT_LENGTH // 3 :] = 0
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, 0),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator),
        "pixel_mask": torch.ones(batch, size, size, dtype=torch.long),
    }


def make_steps(ours: Any, theirs: Any, inputs: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    """One VQA forward per model (text + image embedding, the encoder, the classifier) under ``no_grad``."""

    def ours_step() -> torch.Tensor:
        with torch.no_grad():
            return ours(**inputs).logits

    def theirs_step() -> torch.Tensor:
        with torch.no_grad():
            return theirs(**inputs).logits

    return {"hf_vlp": ours_step, "transformers": theirs_step}


def logit_difference(steps: dict[str, Callable[[], Any]]) -> float:
    return float((steps["hf_vlp"]().float() - steps["transformers"]().float()).abs().max())


def bench(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    theirs = transformers_vqa_model(args.preset, args.seed)
    ours = convert(theirs)
    inputs = random_batch(args.preset, args.batch, args.seed)
    difference = logit_difference(make_steps(ours, theirs, inputs))  # fp32, CPU weights
    if difference > 1e-4:
        raise SystemExit(f"hf_vlp and transformers VQA logits differ by {difference:.2e} in fp32; nothing was timed.")
    print(f"[{args.preset}] fp32 VQA logits agree: max |difference| {difference:.1e}")
    ours.to(device=device, dtype=dtype)
    theirs.to(device=device, dtype=dtype)
    inputs = {
        name: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for name, value in inputs.items()
    }
    results = []
    for kernel in args.ours_attn:
        ours.set_attn_implementation(kernel)
        steps = make_steps(ours, theirs, inputs)
        difference_in_dtype = logit_difference(steps)  # untimed; bf16/fp16 drift is expected
        times = run_alternating(steps, warmup=args.warmup, rounds=args.rounds, device=device)
        throughput_ratios = Summary.of(per_round_ratios(times["transformers"], times["hf_vlp"]))
        rates = {name: args.batch / Summary.of(seconds).median for name, seconds in times.items()}
        print(ratio_line(f"{args.preset} vqa ours-{kernel}", "hf_vlp", "transformers", throughput_ratios, "samples/s"))
        results.append({
            "preset": args.preset,
            "ours_attention": kernel,
            "transformers_attention": theirs.config._attn_implementation,
            "batch": args.batch,
            "text_length": TEXT_LENGTH,
            "samples_per_second": rates,
            "call_ms": {name: Summary.of(seconds).scaled(1e3).to_dict() for name, seconds in times.items()},
            "ratio_samples_per_second_hf_vlp_over_transformers": throughput_ratios.to_dict(),
            "time_ratio_hf_vlp_over_transformers": 1.0 / throughput_ratios.median,
            "ratio_of_minimums": ratio_of_minimums(times["transformers"], times["hf_vlp"]),
            "max_logit_difference_fp32": difference,
            "max_logit_difference_in_timed_dtype": difference_in_dtype,
            "raw_seconds": times,
        })
    return results


def results_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        rates = result["samples_per_second"]
        ratio = result["ratio_samples_per_second_hf_vlp_over_transformers"]
        rows.append([
            result["preset"], result["ours_attention"], result["batch"], f"{rates['hf_vlp']:.2f}",
            f"{rates['transformers']:.2f}", f"{ratio['median']:.3f}", f"{ratio['q1']:.3f}-{ratio['q3']:.3f}",
            f"{result['time_ratio_hf_vlp_over_transformers']:.3f}", f"{result['max_logit_difference_in_timed_dtype']:.1e}",
        ])
    headers = ["preset", "ours attn", "batch", "hf_vlp samples/s", "transformers samples/s", "ratio ours/theirs",
               "ratio IQR", "time ratio", "max |dlogit|"]
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    threads = set_threads(args.threads)
    print(f"bench_vilt: device {device}, dtype {args.dtype}, threads {threads}, preset {args.preset}, batch "
          f"{args.batch}, rounds {args.rounds}, {TEXT_LENGTH} text tokens")
    results = bench(args, device, dtype)
    return report("bench_vilt", device, args, results_table(results), results=results)


if __name__ == "__main__":
    main()
