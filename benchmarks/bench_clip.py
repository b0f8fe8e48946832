"""Forward and forward+backward time of hf_vlp's ``VlpClipModel`` against transformers' ``CLIPModel``.

Both models hold the same weights (a random transformers ``CLIPModel`` converted with
``conversion/convert_clip.py``), use SDPA attention and see the same batch; their logits are checked to agree
(atol 1e-3) before anything is timed. Timing alternates the two models in one process (see
``benchmarks/common.py``) and reports medians and the median per-round ratio ours/transformers (lower = ours
faster).

    python benchmarks/bench_clip.py                       # CPU, ViT-B/32 and ViT-B/16, batch 8
    python benchmarks/bench_clip.py --device cuda --dtype bf16 --batch 64 --json out/bench_clip.json
    python benchmarks/bench_clip.py --smoke               # tiny model, one round: a wiring check, not a measurement

Text rows are full 77-token rows (end-of-text at a random position, zeros after) passed without an attention
mask: CLIP's causal mask already hides the padding from the pooled token, and a padding mask would only add
work to transformers (ours ignores it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import (
    Summary,
    build_transformers_clip,
    clip_forward_flops,
    convert_transformers_clip,
    format_table,
    per_round_ratios,
    ratio_of_minimums,
    preset_config,
    profile_table,
    random_clip_batch,
    ratio_line,
    report,
    require_sdpa,
    resolve_device,
    resolve_dtype,
    run_alternating,
    set_threads,
    tiny_clip_config,
)

MODES = ("forward", "forward_backward")
LOGITS_ATOL = 1e-3
CHECK_ROWS = 8  # the fp32 CPU agreement check runs on the first rows only: large GPU batches stay cheap
DEFAULT_PRESETS = ("ViT-B/32", "ViT-B/16")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS), help="VlpClipConfig presets to time")
    parser.add_argument("--batch", type=int, default=8, help="images and texts per batch")
    parser.add_argument("--rounds", type=int, default=7, help="timed alternating rounds per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model before timing")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16: weights and inputs are cast to it")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler operator table per model/mode")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny config, batch 2, one round: checks the wiring")
    args = parser.parse_args(argv)
    if args.smoke:
        args.presets, args.batch, args.rounds, args.warmup = ["smoke"], 2, 1, 1
    if args.batch < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--batch and --rounds must be at least 1 and --warmup non-negative")
    return args


def build_pair(preset: str, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, transformers) with identical weights for ``preset`` (``"smoke"``: the tiny config)."""
    config = tiny_clip_config() if preset == "smoke" else preset_config(preset)
    theirs = build_transformers_clip(config, seed)
    ours = convert_transformers_clip(theirs)
    require_sdpa({"hf_vlp": ours, "transformers": theirs})
    return ours, theirs


@torch.no_grad()
def check_agreement(
    ours: torch.nn.Module, theirs: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> float:
    """Max |logits difference| in fp32 eval mode; raises when above ``LOGITS_ATOL``."""
    ours.eval(), theirs.eval()
    ours_logits = ours(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    theirs_logits = theirs(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    difference = float((ours_logits - theirs_logits).abs().max())
    if not torch.allclose(ours_logits, theirs_logits, atol=LOGITS_ATOL, rtol=0):
        raise SystemExit(f"hf_vlp and transformers disagree: max |logits diff| {difference:.2e} > {LOGITS_ATOL}")
    return difference


def make_step(
    model: torch.nn.Module, mode: str, pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> Callable[[], Any]:
    """One timed call: an eval forward under ``no_grad``, or a train-mode forward + contrastive loss + backward."""
    if mode == "forward":

        def forward() -> Any:
            with torch.no_grad():
                return model(input_ids=input_ids, pixel_values=pixel_values)

        return forward

    def forward_backward() -> Any:
        loss = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    return forward_backward


def bench_preset(
    preset: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[dict[str, Any]]:
    ours, theirs = build_pair(preset, args.seed)
    pixel_values, input_ids = random_clip_batch(ours.config, args.batch, args.seed)
    difference = check_agreement(ours, theirs, pixel_values[:CHECK_ROWS], input_ids[:CHECK_ROWS])
    print(f"[{preset}] max |logits diff| hf_vlp vs transformers (fp32, eval): {difference:.2e}")
    ours.to(device=device, dtype=dtype)
    theirs.to(device=device, dtype=dtype)
    pixel_values, input_ids = pixel_values.to(device=device, dtype=dtype), input_ids.to(device)
    flops = clip_forward_flops(ours.config)["total"] * args.batch
    results = []
    for mode in args.modes:
        for model in (ours, theirs):
            model.train(mode != "forward")
        steps = {
            "hf_vlp": make_step(ours, mode, pixel_values, input_ids),
            "transformers": make_step(theirs, mode, pixel_values, input_ids),
        }
        times = run_alternating(steps, warmup=args.warmup, rounds=args.rounds, device=device)
        if args.profile:
            for name, step in steps.items():
                print(f"\n[{preset} {mode}] profile of {name}\n{profile_table(step, device)}")
        ratios = Summary.of(per_round_ratios(times["hf_vlp"], times["transformers"]))
        results.append(
            {
                "preset": preset,
                "mode": mode,
                "batch": args.batch,
                "forward_gflops": flops / 1e9,
                "hf_vlp_ms": Summary.of(times["hf_vlp"]).scaled(1e3).to_dict(),
                "transformers_ms": Summary.of(times["transformers"]).scaled(1e3).to_dict(),
                "ratio_hf_vlp_over_transformers": ratios.to_dict(),
                "ratio_of_minimums": ratio_of_minimums(times["hf_vlp"], times["transformers"]),
                "raw_seconds": times,
                "max_abs_logits_diff": difference,
            }
        )
        print(ratio_line(f"{preset} {mode}", "hf_vlp", "transformers", ratios, "time"))
    del ours, theirs
    return results


def results_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        ours, theirs, ratio = result["hf_vlp_ms"], result["transformers_ms"], result["ratio_hf_vlp_over_transformers"]
        rows.append(
            [
                result["preset"],
                result["mode"],
                result["batch"],
                f"{ours['median']:.1f} (±{100 * ours['relative_iqr'] / 2:.0f}%)",
                f"{theirs['median']:.1f} (±{100 * theirs['relative_iqr'] / 2:.0f}%)",
                f"{ratio['median']:.3f}",
                f"{ratio['q1']:.3f}-{ratio['q3']:.3f}",
                f"{result['ratio_of_minimums']:.3f}",
            ]
        )
    headers = [
        "preset", "mode", "batch", "hf_vlp ms", "transformers ms", "ratio ours/theirs", "ratio IQR", "ratio of mins"
    ]
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    threads = set_threads(args.threads)
    print(
        f"bench_clip: device {device}, dtype {args.dtype}, threads {threads}, batch {args.batch}, "
        f"rounds {args.rounds}"
    )
    results = []
    for preset in args.presets:
        results.extend(bench_preset(preset, args, device, dtype))
    return report("bench_clip", device, args, results_table(results), results=results)


if __name__ == "__main__":
    main()
