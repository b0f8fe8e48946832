"""Shared pieces of the benchmark scripts: alternating timing, summaries, tables, FLOP counts and matched models.

Timing principle: every contender runs once per round, in a rotating order, inside one process, after a warm-up;
the headline number is the median over rounds and the ratio is the median of the *per-round* ratios, so slow drift
of the machine's load (other jobs on a shared box) hits both sides of each ratio alike.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")  # benchmarks build random models; nothing may reach the hub

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as ``python benchmarks/bench_*.py``: make hf_vlp and conversion importable
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from hf_vlp.models.clip.configuration_clip import VlpClipConfig  # noqa: E402
from hf_vlp.models.clip.modeling_clip import VlpClipModel  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RATIO_PREFIX = "ratio"


# --------------------------------------------------------------------------------------------------- devices


def resolve_device(name: str) -> torch.device:
    """``torch.device`` for ``name``, with a clear error when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine; run with --device cpu.")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SystemExit(f"--dtype {name!r} is not supported; choose one of {sorted(DTYPES)}.")
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock time covers the work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_threads(threads: int | None) -> int:
    """Apply ``--threads`` when given; return the intra-op thread count in use."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# --------------------------------------------------------------------------------------------------- timing


def time_once(step: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``step`` takes, synchronised on ``device``."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def run_alternating(
    steps: Mapping[str, Callable[[], Any]], *, warmup: int, rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Time every step ``rounds`` times, one call of each per round, the order rotating from round to round.

    Each step first runs ``warmup`` untimed calls (allocator, kernel selection, lazy init). Returns seconds per call.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(steps[name], device))
    return times


@dataclass
class Summary:
    """Robust summary of repeated measurements: median, quartiles and extremes."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Summary":
        if not values:
            raise ValueError("cannot summarise an empty list of measurements")
        ordered = sorted(values)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))

    @property
    def relative_iqr(self) -> float:
        """Interquartile range over the median: the run's noise level."""
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def scaled(self, factor: float) -> "Summary":
        """The same summary in other units (e.g. seconds -> milliseconds); ``factor`` must be positive."""
        return Summary(*(value * factor for value in (self.median, self.q1, self.q3, self.min, self.max)), self.n)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "relative_iqr": self.relative_iqr}


def per_round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """``numerator[i] / denominator[i]`` for every round (both sides timed in the same round)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"rounds differ: {len(numerator)} vs {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator)]


def ratio_of_minimums(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """``min(numerator) / min(denominator)``: the ratio least touched by interference from other jobs."""
    return min(numerator) / min(denominator)


def ratio_line(label: str, ours: str, theirs: str, ratios: Summary, what: str) -> str:
    """The line a reader (and the smoke test) looks for: ``ratio <label> ours/theirs <what> = 0.97 (IQR ...)``."""
    return (
        f"{RATIO_PREFIX} {label} {ours}/{theirs} {what} = {ratios.median:.3f} "
        f"(per-round IQR {ratios.q1:.3f}-{ratios.q3:.3f}, range {ratios.min:.3f}-{ratios.max:.3f}, n={ratios.n})"
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table (Markdown-compatible pipes)."""
    cells = [[str(header) for header in headers]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def profile_table(step: Callable[[], Any], device: torch.device, row_limit: int = 15) -> str:
    """torch.profiler operator table (sorted by self time) for one call of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        step()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=row_limit)


# --------------------------------------------------------------------------------------------------- reporting


def machine_description(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: date, host CPU/GPU, thread count and library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    description: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    try:
        import open_clip

        description["open_clip"] = open_clip.__version__
    except ImportError:  # only bench_train_clip.py needs it
        pass
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def report(
    benchmark: str, device: torch.device, args: Any, table: str, **results: Any
) -> dict[str, Any]:
    """Print ``table`` and return the JSON payload of a run (``benchmark``, the machine, the settings and
    ``results``), also written to ``args.json_path`` when given."""
    print()
    print(table)
    payload = {
        "benchmark": benchmark,
        "machine": machine_description(device),
        "settings": {key: value for key, value in vars(args).items() if key != "json_path"},
        **results,
    }
    if args.json_path:
        print(f"wrote {write_json(args.json_path, payload)}")
    return payload


def model_comparison_parser(
    description: str, presets: Sequence[str], default_preset: str, default_batch: int, what: str
) -> Any:
    """The options of a benchmark that times one hf_vlp model against its peer on one preset: ``--preset``,
    ``--batch`` (``what`` per call), ``--rounds``, ``--warmup``, ``--device``, ``--dtype``, ``--ours-attn``,
    ``--threads``, ``--seed``, ``--json`` and ``--smoke``; :func:`parse_comparison_args` reads them."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(presets), default=default_preset, help="model size (see PRESETS)")
    parser.add_argument("--batch", type=int, default=default_batch, help=f"{what} per call")
    parser.add_argument("--rounds", type=int, default=5, help="timed alternating rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model before timing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16: weights and images are cast to it")
    parser.add_argument("--ours-attn", nargs="+", choices=("sdpa", "eager"), default=["sdpa"],
                        help="attention kernel(s) of hf_vlp's model to time")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny config, batch 2, one round: checks the wiring")
    return parser


def parse_comparison_args(parser: Any, argv: Sequence[str] | None) -> Any:
    """Parse :func:`model_comparison_parser`'s options; ``--smoke`` means the ``smoke`` preset, batch 2, one round."""
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.batch, args.rounds, args.warmup = "smoke", 2, 1, 0
    if args.batch < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--batch and --rounds must be at least 1 and --warmup non-negative")
    return args


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------- configs, inputs


def tiny_clip_config() -> VlpClipConfig:
    """A two-layer CLIP that runs in milliseconds: the ``--smoke`` configuration of every benchmark."""
    return VlpClipConfig(
        projection_dim=32,
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            eos_token_id=999,
            bos_token_id=998,
            pad_token_id=0,
        ),
    )


def preset_config(name: str) -> VlpClipConfig:
    """``VlpClipConfig.from_preset`` restricted to ViT towers (the ones every contender implements)."""
    config = VlpClipConfig.from_preset(name)
    if config.vision_config.architecture != "vit":
        raise SystemExit(f"Preset {name!r} has a ResNet image tower; the benchmarks compare ViT presets only.")
    return config


def random_clip_batch(
    config: VlpClipConfig, batch: int, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and full-length token rows: ``[BOS, tokens..., EOT, 0...]`` with EOT at a random position.

    Tokens before EOT stay below its id, so first-EOT pooling (ours, transformers) and argmax pooling (open_clip)
    select the same position.
    """
    generator = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    pixel_values = torch.randn(batch, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    length, eos = text.max_position_embeddings, text.eos_token_id
    input_ids = torch.randint(1, min(eos, text.vocab_size - 1), (batch, length), generator=generator)
    ends = torch.randint(2, length, (batch,), generator=generator)
    positions = torch.arange(length)[None, :]
    input_ids[:, 0] = text.bos_token_id if text.bos_token_id is not None else 1
    input_ids = torch.where(positions == ends[:, None], torch.full_like(input_ids, eos), input_ids)
    input_ids = torch.where(positions > ends[:, None], torch.zeros_like(input_ids), input_ids)
    return pixel_values.to(device), input_ids.to(device)


# --------------------------------------------------------------------------------------------------- FLOPs


def transformer_tower_flops(width: int, mlp_width: int, layers: int, tokens: int) -> float:
    """Forward FLOPs of one pre-norm transformer tower on one sequence (a multiply-add counts 2).

    Per layer: projections ``2 * L * (4 d^2 + 2 d m)`` (q, k, v, out + two MLP matmuls) and attention
    ``4 * L^2 * d`` (QK^T and AV, full square even under a causal mask, as open_clip's profiler counts).
    Norms, activations and softmax are left out (a few percent at these sizes).
    """
    projections = 2 * tokens * (4 * width * width + 2 * width * mlp_width)
    attention = 4 * tokens * tokens * width
    return float(layers * (projections + attention))


def clip_forward_flops(config: VlpClipConfig) -> dict[str, float]:
    """Analytic forward FLOPs per image-text pair of a ViT CLIP: ``{"image", "text", "total"}``.

    image = patch-embedding conv ``2 * N * (C p^2) * d`` + tower on ``N + 1`` tokens + projection ``2 d e``;
    text = tower on the full context + projection. ViT-B/16 gives 35.13 + 5.96 = 41.09 GFLOPs, ViT-B/32
    8.82 + 5.96, matching open_clip's ``docs/model_profile.csv``. A training step costs about 3x forward.
    """
    vision, text = config.vision_config, config.text_config
    if vision.architecture != "vit":
        raise ValueError("clip_forward_flops counts ViT image towers only")
    patches = (vision.image_size // vision.patch_size) ** 2
    patch_embed = 2 * patches * vision.num_channels * vision.patch_size**2 * vision.hidden_size
    image = (
        patch_embed
        + transformer_tower_flops(vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, patches + 1)
        + 2 * vision.hidden_size * config.projection_dim
    )
    text_flops = transformer_tower_flops(
        text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.max_position_embeddings
    ) + 2 * text.hidden_size * config.projection_dim
    return {"image": image, "text": text_flops, "total": image + text_flops}


# --------------------------------------------------------------------------------------------------- matched models


def transformers_clip_config(config: VlpClipConfig) -> Any:
    """The transformers ``CLIPConfig`` with the same sizes, activation, norm epsilon and token ids as ``config``."""
    from transformers import CLIPConfig

    vision, text = config.vision_config, config.text_config
    if vision.architecture != "vit":
        raise ValueError("transformers' CLIPModel has no ResNet image tower")
    return CLIPConfig(
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
        vision_config=dict(
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            num_channels=vision.num_channels,
            hidden_act=vision.hidden_act,
            layer_norm_eps=vision.layer_norm_eps,
            projection_dim=config.projection_dim,
        ),
        text_config=dict(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers,
            num_attention_heads=text.num_attention_heads,
            max_position_embeddings=text.max_position_embeddings,
            hidden_act=text.hidden_act,
            layer_norm_eps=text.layer_norm_eps,
            eos_token_id=text.eos_token_id,
            bos_token_id=text.bos_token_id,
            pad_token_id=text.pad_token_id,
            projection_dim=config.projection_dim,
        ),
    )


def build_transformers_clip(config: VlpClipConfig, seed: int = 0) -> Any:
    """A randomly initialised transformers ``CLIPModel`` equivalent to ``config``, using SDPA attention."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(transformers_clip_config(config))
    model.set_attn_implementation("sdpa")
    return model


def convert_transformers_clip(hf_model: Any) -> VlpClipModel:
    """Our ``VlpClipModel`` with ``hf_model``'s exact weights, through the project converter (save, convert)."""
    import logging

    from transformers.utils import logging as transformers_logging

    from conversion.convert_clip import convert_clip_checkpoint

    logging.getLogger("conversion.clip").setLevel(logging.ERROR)  # "no tokenizer" is expected: weights only
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        model = convert_clip_checkpoint(directory).model
    model.set_attn_implementation("sdpa")
    return model


def attention_implementations(model: torch.nn.Module) -> set[str]:
    """Every ``_attn_implementation`` named by the model's (sub-)configs, to prove both sides run SDPA."""
    found = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        name = getattr(config, "_attn_implementation", None)
        if name is not None:
            found.add(name)
    return found


def require_sdpa(models: Mapping[str, torch.nn.Module]) -> None:
    """Fail loudly when any contender would run another attention kernel than SDPA."""
    for name, model in models.items():
        kernels = attention_implementations(model)
        if kernels != {"sdpa"}:
            raise SystemExit(f"{name} runs attention kernels {sorted(kernels)}, expected SDPA only.")


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
