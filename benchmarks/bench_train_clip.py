"""Training-step throughput (samples/s) of hf_vlp's CLIP against open_clip's CLIP and transformers' CLIPModel.

Every contender gets the same configuration, the same batch, the same optimiser (AdamW, open_clip's defaults:
betas 0.9/0.98, eps 1e-6, weight decay 0.2) and the same loss (``open_clip.loss.ClipLoss`` on the normalised
features and ``exp(logit_scale)``). hf_vlp and open_clip hold identical weights (open_clip's state dict converted
with ``conversion/convert_clip.py``) and their losses are checked to agree before timing; transformers is an
independent random init of the same configuration (equal parameter count is checked). One step is forward, loss,
backward, optimiser step and ``zero_grad(set_to_none=True)`` on a batch already on the device: no data loading.
Steps alternate between contenders in one process (see ``benchmarks/common.py``).

    python benchmarks/bench_train_clip.py                  # CPU: ViT-B/32 geometry at half width, batch 16, fp32
    python benchmarks/bench_train_clip.py --device cuda    # GPU: ViT-B/16, batch 256, bf16 autocast, fused AdamW
    python benchmarks/bench_train_clip.py --smoke          # tiny model, one round: a wiring check, not a measurement

MFU = samples/s x 3 x forward FLOPs per sample / peak FLOP/s, with forward FLOPs counted analytically
(``common.clip_forward_flops``: matmuls as 2 x multiply-adds plus the QK^T/AV attention products; 41.09 GFLOPs
for ViT-B/16) and training = 3 x forward. Peak defaults to an H100's dense bf16 989 TFLOP/s on CUDA
(``--peak-tflops`` for other chips); on CPU, MFU is printed only when ``--peak-tflops`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    format_table,
    machine_description,
    parameter_count,
    per_round_ratios,
    ratio_of_minimums,
    preset_config,
    random_clip_batch,
    ratio_line,
    require_sdpa,
    resolve_device,
    run_alternating,
    set_threads,
    synchronize,
    tiny_clip_config,
    write_json,
)
from hf_vlp.models.clip.configuration_clip import VlpClipConfig

CONTENDERS = ("hf_vlp", "open_clip", "transformers")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
LOSS_ATOL = 1e-4
CHECK_ROWS = 8  # the fp32 CPU loss check runs on the first pairs only: large GPU batches stay cheap
H100_DENSE_BF16_TFLOPS = 989.0
HALF_WIDTH_PRESET = "ViT-B/32@half-width"
# one H100, reported in the issue: (samples/s, MFU) at ViT-B/16, batch 256, bf16
GPU_REFERENCE = {"open_clip 3.3": (1725, 0.216), "transformers 5.17 CLIPModel": (1657, None)}
DEFAULTS = {
    "cpu": dict(preset=HALF_WIDTH_PRESET, batch=16, rounds=5, warmup=1, precision="fp32"),
    "cuda": dict(preset="ViT-B/16", batch=256, rounds=20, warmup=5, precision="bf16"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--preset", default=None, help=f"a ViT VlpClipConfig preset or {HALF_WIDTH_PRESET!r} (default: by device)"
    )
    parser.add_argument("--batch", type=int, default=None, help="image-text pairs per step (default: 16 CPU, 256 GPU)")
    parser.add_argument("--rounds", type=int, default=None, help="timed alternating rounds (default: 5 CPU, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per contender (default: 1 CPU, 5 GPU)")
    parser.add_argument(
        "--precision", choices=sorted(PRECISIONS), default=None, help="autocast dtype (default: fp32 CPU, bf16 GPU)"
    )
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="peak dense TFLOP/s for MFU (default: 989 on CUDA)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny config, batch 4, one round: checks the wiring")
    args = parser.parse_args(argv)
    device_type = torch.device(args.device).type
    for key, value in DEFAULTS["cuda" if device_type == "cuda" else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.preset, args.batch, args.rounds, args.warmup = "smoke", 4, 1, 1
    if args.peak_tflops is None and device_type == "cuda":
        args.peak_tflops = H100_DENSE_BF16_TFLOPS
    if "hf_vlp" not in args.contenders or len(set(args.contenders)) < 2:
        parser.error("--contenders must name hf_vlp and at least one other contender")
    args.contenders = list(dict.fromkeys(args.contenders))
    if args.batch < 2 or args.rounds < 1 or args.warmup < 0:
        parser.error("--batch must be at least 2 (a contrastive batch), --rounds at least 1, --warmup non-negative")
    return args


# --------------------------------------------------------------------------------------------------- models


def bench_config(preset: str) -> VlpClipConfig:
    """``smoke``, a ViT preset, or the CPU default: ViT-B/32's geometry with every width and head count halved."""
    if preset == "smoke":
        return tiny_clip_config()
    if preset == HALF_WIDTH_PRESET:
        base = preset_config("ViT-B/32")
        vision, text = base.vision_config.to_dict(), base.text_config.to_dict()
        for tower in (vision, text):
            for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
                tower[key] //= 2
        return VlpClipConfig(projection_dim=base.projection_dim // 2, vision_config=vision, text_config=text)
    return preset_config(preset)


def build_open_clip(config: VlpClipConfig, seed: int) -> torch.nn.Module:
    """open_clip's ``CLIP`` with the sizes, activation and heads of ``config`` (random init)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision, text = config.vision_config, config.text_config
    if vision.hidden_act != text.hidden_act or vision.hidden_act not in ("quick_gelu", "gelu"):
        raise SystemExit(
            f"open_clip supports quick_gelu or gelu in both towers, got {vision.hidden_act}/{text.hidden_act}"
        )
    torch.manual_seed(seed)
    return CLIP(
        embed_dim=config.projection_dim,
        vision_cfg=CLIPVisionCfg(
            layers=vision.num_hidden_layers,
            width=vision.hidden_size,
            head_width=vision.hidden_size // vision.num_attention_heads,
            mlp_ratio=vision.intermediate_size / vision.hidden_size,
            patch_size=vision.patch_size,
            image_size=vision.image_size,
        ),
        text_cfg=CLIPTextCfg(
            context_length=text.max_position_embeddings,
            vocab_size=text.vocab_size,
            width=text.hidden_size,
            heads=text.num_attention_heads,
            layers=text.num_hidden_layers,
            mlp_ratio=text.intermediate_size / text.hidden_size,
        ),
        quick_gelu=vision.hidden_act == "quick_gelu",
        output_dict=True,
    )


def convert_open_clip(open_clip_model: torch.nn.Module, config: VlpClipConfig) -> torch.nn.Module:
    """Our ``VlpClipModel`` with the open_clip model's exact weights, through the project converter."""
    from conversion.convert_clip import convert_clip_checkpoint

    logging.getLogger("conversion.clip").setLevel(logging.ERROR)  # "no tokenizer" is expected: weights only
    heads = {
        "transformer_heads": config.text_config.num_attention_heads,
        "vision_heads": config.vision_config.num_attention_heads,
    }
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "open_clip_state_dict.pt")
        torch.save(open_clip_model.state_dict(), path)
        model = convert_clip_checkpoint(path, original_config=heads).model
    model.set_attn_implementation("sdpa")
    return model


# forward functions: (model, pixel_values, input_ids) -> (normalised image features, normalised text features, scale)
Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def hf_vlp_features(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> Features:
    output = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=False)
    return output.image_embeds, output.text_embeds, model.logit_scale.exp()


def open_clip_features(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> Features:
    output = model(pixel_values, input_ids)
    return output["image_features"], output["text_features"], output["logit_scale"]


def transformers_features(model: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> Features:
    output = model(input_ids=input_ids, pixel_values=pixel_values)
    return output.image_embeds, output.text_embeds, model.logit_scale.exp()


FEATURE_FUNCTIONS: dict[str, Callable[..., Features]] = {
    "hf_vlp": hf_vlp_features,
    "open_clip": open_clip_features,
    "transformers": transformers_features,
}


def build_contenders(config: VlpClipConfig, names: Sequence[str], seed: int) -> dict[str, torch.nn.Module]:
    """The requested models; hf_vlp always carries open_clip's weights so that their losses can be compared."""
    open_clip_model = build_open_clip(config, seed)
    models = {"hf_vlp": convert_open_clip(open_clip_model, config)}
    if "open_clip" in names:
        models["open_clip"] = open_clip_model
    if "transformers" in names:
        models["transformers"] = build_transformers_clip(config, seed)
    require_sdpa({name: model for name, model in models.items() if name != "open_clip"})
    counts = {name: parameter_count(model) for name, model in models.items()}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"The contenders' configurations differ: parameter counts {counts}")
    return models


def check_losses(
    models: dict[str, torch.nn.Module], pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> dict[str, float]:
    """fp32 losses of every contender; hf_vlp must match open_clip (same weights) and its own built-in loss."""
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    losses = {}
    with torch.no_grad():
        for name, model in models.items():
            model.train()
            losses[name] = float(loss_fn(*FEATURE_FUNCTIONS[name](model, pixel_values, input_ids)))
        builtin = float(models["hf_vlp"](input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss)
    if abs(builtin - losses["hf_vlp"]) > LOSS_ATOL:
        raise SystemExit(
            f"hf_vlp's built-in loss {builtin:.6f} differs from open_clip's ClipLoss {losses['hf_vlp']:.6f}"
        )
    if "open_clip" in losses and abs(losses["open_clip"] - losses["hf_vlp"]) > LOSS_ATOL:
        raise SystemExit(f"hf_vlp and open_clip disagree with identical weights: losses {losses}")
    return losses


# --------------------------------------------------------------------------------------------------- training step


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with open_clip's defaults; the fused kernel on CUDA (the multi-tensor one on CPU)."""
    return torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, fused=device.type == "cuda"
    )


def make_train_step(
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    precision: torch.dtype | None,
) -> Callable[[], torch.Tensor]:
    from open_clip.loss import ClipLoss

    loss_fn, features = ClipLoss(), FEATURE_FUNCTIONS[name]
    device_type = pixel_values.device.type

    def step() -> torch.Tensor:
        autocast = (
            torch.autocast(device_type, dtype=precision) if precision is not None else contextlib.nullcontext()
        )
        with autocast:
            loss = loss_fn(*features(model, pixel_values, input_ids))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


@dataclass
class ContenderResult:
    name: str
    step_ms: Summary
    samples_per_second: float
    achieved_tflops: float
    mfu: float | None
    peak_memory_gib: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_ms": self.step_ms.to_dict(),
            "samples_per_second": self.samples_per_second,
            "achieved_tflops": self.achieved_tflops,
            "mfu": self.mfu,
            "peak_memory_gib": self.peak_memory_gib,
        }


def first_step_peak_memory(step: Callable[[], Any], device: torch.device) -> float | None:
    """Run one (warm-up) step and return its peak allocated GPU memory in GiB (``None`` on CPU)."""
    if device.type != "cuda":
        step()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    precision = PRECISIONS[args.precision]
    config = bench_config(args.preset)
    flops = clip_forward_flops(config)
    print(
        f"bench_train_clip: {args.preset} on {device} ({args.precision}), batch {args.batch}, rounds {args.rounds}, "
        f"threads {threads}; forward {flops['total'] / 1e9:.2f} GFLOPs/sample "
        f"(image {flops['image'] / 1e9:.2f}, text {flops['text'] / 1e9:.2f}), training = 3x"
    )
    models = build_contenders(config, args.contenders, args.seed)
    pixel_values, input_ids = random_clip_batch(config, args.batch, args.seed)
    losses = check_losses(models, pixel_values[:CHECK_ROWS], input_ids[:CHECK_ROWS])
    losses_text = ", ".join(f"{name} {loss:.5f}" for name, loss in losses.items())
    print(f"initial fp32 ClipLoss on {min(CHECK_ROWS, args.batch)} pairs: {losses_text}")
    pixel_values, input_ids = pixel_values.to(device), input_ids.to(device)
    steps, peak_memory = {}, {}
    for name, model in models.items():
        model.to(device).train()
        optimizer = make_optimizer(model, args.lr, device)
        steps[name] = make_train_step(name, model, optimizer, pixel_values, input_ids, precision)
        if args.warmup:
            peak_memory[name] = first_step_peak_memory(steps[name], device)
    times = run_alternating(steps, warmup=max(args.warmup - 1, 0), rounds=args.rounds, device=device)

    train_flops_per_sample = 3 * flops["total"]
    results = {}
    for name in models:
        step_seconds = Summary.of(times[name])
        samples_per_second = args.batch / step_seconds.median
        achieved = samples_per_second * train_flops_per_sample / 1e12
        results[name] = ContenderResult(
            name,
            step_seconds.scaled(1e3),
            samples_per_second,
            achieved,
            achieved / args.peak_tflops if args.peak_tflops else None,
            peak_memory.get(name),
        )
    rows = [
        [
            name,
            f"{result.step_ms.median:.1f} (±{100 * result.step_ms.relative_iqr / 2:.0f}%)",
            f"{result.samples_per_second:.1f}",
            f"{result.achieved_tflops:.3f}",
            f"{100 * result.mfu:.1f}%" if result.mfu is not None else "-",
            f"{result.peak_memory_gib:.1f}" if result.peak_memory_gib is not None else "-",
        ]
        for name, result in results.items()
    ]
    print()
    print(format_table(["contender", "step ms", "samples/s", "TFLOP/s", "MFU", "peak GiB"], rows))
    ratios = {}
    for other in models:
        if other == "hf_vlp":
            continue
        # throughput ratio: their step time over ours, round by round (higher = hf_vlp faster)
        ratios[other] = Summary.of(per_round_ratios(times[other], times["hf_vlp"]))
        print(ratio_line(f"train {args.preset}", "hf_vlp", other, ratios[other], "samples/s"))
        print(f"  (best step vs best step: {ratio_of_minimums(times[other], times['hf_vlp']):.3f})")
    if device.type == "cuda":
        reference = "; ".join(
            f"{name} {rate} samples/s" + (f" ({100 * mfu:.1f}% MFU)" if mfu else "")
            for name, (rate, mfu) in GPU_REFERENCE.items()
        )
        print(f"issue reference (one H100, ViT-B/16, batch 256, bf16): {reference}")
    payload = {
        "benchmark": "bench_train_clip",
        "machine": machine_description(device),
        "settings": {key: value for key, value in vars(args).items() if key != "json_path"},
        "forward_flops_per_sample": flops,
        "initial_losses": losses,
        "results": {name: result.to_dict() for name, result in results.items()},
        "throughput_ratio_hf_vlp_over": {name: summary.to_dict() for name, summary in ratios.items()},
        "throughput_ratio_of_best_steps": {name: ratio_of_minimums(times[name], times["hf_vlp"]) for name in ratios},
        "raw_seconds": times,
    }
    if args.json_path:
        print(f"wrote {write_json(args.json_path, payload)}")
    return payload


if __name__ == "__main__":
    main()
