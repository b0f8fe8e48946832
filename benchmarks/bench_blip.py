"""BLIP captioning throughput: hf_vlp's ``VlpBlipForConditionalGeneration.generate`` against transformers'
``BlipForConditionalGeneration.generate`` with identical weights.

A random transformers captioner is saved and converted with ``conversion/blip_transformers.py``; both models caption
the same batch from the same prompt (``[DEC] a picture of``, 4 tokens) with BLIP's COCO decoding (beam 3,
``max_length`` 20, ``min_length`` 5, lengths counting the prompt), and their output ids must be equal (fp32, checked
before timing; ours scores beams as transformers 5 for this, ``beam_scoring="transformers"``). Each call includes the
image tower. Timing alternates the two models in one process (``benchmarks/common.py``) and reports images/s
(batch / median call time) and the median per-round throughput ratio hf_vlp/transformers (above 1 = ours faster).

    python benchmarks/bench_blip.py                            # CPU fp32: the "small" preset, batch 4
    python benchmarks/bench_blip.py --preset base --batch 8    # the released captioner's size (ViT-B/16 @ 384)
    python benchmarks/bench_blip.py --device cuda --dtype bf16 --preset base --batch 64 --json out/bench_blip.json
    python benchmarks/bench_blip.py --smoke                    # tiny model, one round: a wiring check

transformers' BLIP runs eager attention (it has no SDPA path); ours runs SDPA unless ``--ours-attn eager``. Where the
time goes in ours: the ViT once per call, the self-attention key/value cache, and every cross-attention projecting
the image tokens once per call into one copy per image that its beams share (transformers caches the image keys/values
per beam and reorders them with the beams at every step).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/bench_blip.py``
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

# bert-base-uncased + [DEC] + [ENC], as the released BLIP captioners
VOCAB_SIZE, PAD_TOKEN_ID, CLS_TOKEN_ID, SEP_TOKEN_ID, DEC_TOKEN_ID = 30524, 0, 101, 102, 30522
PROMPT_WORDS = (1037, 3861, 1997)  # "a picture of" in bert-base-uncased
DECODING = dict(num_beams=3, max_length=20, min_length=5)  # BLIP's COCO evaluation (configs/caption_coco.yaml)


def _sizes(width: int, heads: int, vision_layers: int, text_layers: int, image_size: int) -> dict[str, Any]:
    return dict(
        vision=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=vision_layers,
                    num_attention_heads=heads, image_size=image_size, patch_size=16),
        text=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=text_layers,
                  num_attention_heads=heads),
    )


# transformers BlipConfig sizes. "base": the released captioner (ViT-B/16 at 384 px + BERT-base decoder); "small": the
# same widths, image size and vocabulary with 4 + 4 layers, so a CPU round takes seconds; "smoke": a wiring check.
PRESETS: dict[str, dict[str, Any]] = {
    "base": _sizes(768, 12, 12, 12, 384),
    "small": _sizes(768, 12, 4, 4, 384),
    "smoke": _sizes(32, 2, 1, 1, 32),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = model_comparison_parser(__doc__.split("\n\n")[0], PRESETS, "small", 4, "images")
    return parse_comparison_args(parser, argv)


def transformers_captioner(preset: str, seed: int) -> Any:
    """A random transformers ``BlipForConditionalGeneration`` of ``preset`` (BERT special ids, vision eps 1e-6)."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    sizes = PRESETS[preset]
    config = BlipConfig(
        vision_config={**sizes["vision"], "layer_norm_eps": 1e-6},
        text_config={**sizes["text"], "vocab_size": VOCAB_SIZE, "encoder_hidden_size": sizes["vision"]["hidden_size"],
                     "bos_token_id": DEC_TOKEN_ID, "sep_token_id": SEP_TOKEN_ID, "pad_token_id": PAD_TOKEN_ID},
    )
    torch.manual_seed(seed)
    return BlipForConditionalGeneration(config).eval()


def convert(theirs: Any) -> Any:
    """hf_vlp's captioner with ``theirs``' exact weights, through ``conversion/blip_transformers.py``."""
    from transformers.utils import logging as transformers_logging

    from conversion.blip_transformers import convert_transformers_blip

    logging.getLogger("conversion.blip").setLevel(logging.ERROR)  # "no tokenizer" is expected: weights only
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as directory:
        theirs.save_pretrained(directory)
        return convert_transformers_blip(directory).model.eval()


def random_images(preset: str, batch: int, seed: int) -> torch.Tensor:
    vision = PRESETS[preset]["vision"]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, vision["image_size"], vision["image_size"], generator=generator)


def prompt_ids(batch: int) -> torch.Tensor:
    """``[CLS] a picture of [SEP]`` per image, as a processor writes it (both models drop the [SEP], [CLS] -> [DEC])."""
    return torch.tensor([[CLS_TOKEN_ID, *PROMPT_WORDS, SEP_TOKEN_ID]]).repeat(batch, 1)


def make_steps(ours: Any, theirs: Any, pixel_values: torch.Tensor, prompt: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """One captioning call per model: image tower + beam-3 decoding, under ``no_grad``."""

    def ours_step() -> torch.Tensor:
        with torch.no_grad():
            return ours.generate(pixel_values, prompt, beam_scoring="transformers", **DECODING)

    def theirs_step() -> torch.Tensor:
        with torch.no_grad():  # transformers' generate writes [DEC] into its input_ids: give it a copy
            return theirs.generate(pixel_values=pixel_values, input_ids=prompt.clone(), **DECODING)

    return {"hf_vlp": ours_step, "transformers": theirs_step}


def check_equal_ids(steps: dict[str, Callable[[], Any]]) -> tuple[torch.Tensor, bool]:
    """Both models' caption ids and whether they are equal."""
    ours, theirs = steps["hf_vlp"](), steps["transformers"]()
    return ours, ours.shape == theirs.shape and bool(torch.equal(ours.cpu(), theirs.cpu()))


def bench(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    theirs = transformers_captioner(args.preset, args.seed)
    ours = convert(theirs)
    pixel_values, prompt = random_images(args.preset, args.batch, args.seed), prompt_ids(args.batch)
    # fp32 agreement first, on the CPU weights: the output ids must be identical
    generated, equal = check_equal_ids(make_steps(ours, theirs, pixel_values, prompt))
    if not equal:
        raise SystemExit("hf_vlp and transformers generated different caption ids in fp32; nothing was timed.")
    print(f"[{args.preset}] fp32 caption ids equal: {tuple(generated.shape)} "
          f"({int((generated[:, prompt.shape[1] - 1:] != PAD_TOKEN_ID).sum())} generated tokens)")
    ours.to(device=device, dtype=dtype)
    theirs.to(device=device, dtype=dtype)
    pixel_values, prompt = pixel_values.to(device=device, dtype=dtype), prompt.to(device)
    results = []
    for kernel in args.ours_attn:
        ours.set_attn_implementation(kernel)
        steps = make_steps(ours, theirs, pixel_values, prompt)
        equal_in_dtype = check_equal_ids(steps)[1]  # untimed; in bf16/fp16 the ids may legitimately drift
        times = run_alternating(steps, warmup=args.warmup, rounds=args.rounds, device=device)
        throughput_ratios = Summary.of(per_round_ratios(times["transformers"], times["hf_vlp"]))
        rates = {name: args.batch / Summary.of(seconds).median for name, seconds in times.items()}
        label = f"{args.preset} caption ours-{kernel}"
        print(ratio_line(label, "hf_vlp", "transformers", throughput_ratios, "images/s"))
        results.append({
            "preset": args.preset,
            "ours_attention": kernel,
            "transformers_attention": "eager",
            "batch": args.batch,
            "decoding": DECODING,
            "images_per_second": rates,
            "call_ms": {name: Summary.of(seconds).scaled(1e3).to_dict() for name, seconds in times.items()},
            "ratio_images_per_second_hf_vlp_over_transformers": throughput_ratios.to_dict(),
            "ratio_of_minimums": ratio_of_minimums(times["transformers"], times["hf_vlp"]),
            "ids_equal_fp32": equal,
            "ids_equal_in_timed_dtype": equal_in_dtype,
            "raw_seconds": times,
        })
    return results


def results_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        rates, ratio = result["images_per_second"], result["ratio_images_per_second_hf_vlp_over_transformers"]
        rows.append([
            result["preset"], result["ours_attention"], result["batch"], f"{rates['hf_vlp']:.3f}",
            f"{rates['transformers']:.3f}", f"{ratio['median']:.3f}", f"{ratio['q1']:.3f}-{ratio['q3']:.3f}",
            f"{result['ratio_of_minimums']:.3f}", result["ids_equal_in_timed_dtype"],
        ])
    headers = ["preset", "ours attn", "batch", "hf_vlp img/s", "transformers img/s", "ratio ours/theirs", "ratio IQR",
               "ratio of best", "ids equal"]
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    threads = set_threads(args.threads)
    print(f"bench_blip: device {device}, dtype {args.dtype}, threads {threads}, preset {args.preset}, batch "
          f"{args.batch}, rounds {args.rounds}, decoding {DECODING}")
    results = bench(args, device, dtype)
    return report("bench_blip", device, args, results_table(results), results=results)


if __name__ == "__main__":
    main()
