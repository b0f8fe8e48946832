"""CoCa benchmark: captioning and training-step throughput of hf_vlp's CoCa against open_clip 3.3's ``CoCa`` holding
the same weights, as ratios measured in one process.

A random open_clip ``CoCa`` of ``--preset`` (built from its model-config JSON; ``text_decoder.text_projection``, which
open_clip leaves as uninitialised memory, is drawn N(0, width^-1/2)) is saved and converted with
``conversion/convert_coca.py``; both models see the same images and texts.

1. Captioning, one timed call = image tower + decoding (images/s), ``--seq-len`` 30 and ``--min-len`` 5 (open_clip's
   ``seq_len`` / ``min_seq_len`` defaults; ours ``max_length`` / ``min_length``, start-of-text included):
   - greedy: open_clip's own ``CoCa.generate(generation_type="top_k", top_k=1)`` against ours with ``num_beams=1,
     do_sample=False``. open_clip 3.3.0 disables ``generate`` under transformers 5 (its ``BeamSearchScorer`` import
     fails); the benchmark re-enables the top-k path while it runs, as the reference fixture did
     (``open_clip.coca_model._has_transformers = True``, ``GENERATION_TYPES["top_k"] = transformers.TopKLogitsWarper``),
     and restores both afterwards. open_clip encodes the image once, then every step re-runs the text tower and the
     multimodal decoder on the whole prefix (no key/value cache).
   - beam search (``--beams``, default 3): open_clip's beam path cannot run under transformers 5 (it needs the removed
     ``BeamSearchScorer``), so the peer, labelled ``open_clip_uncached_beam``, is open_clip's model decoded the way
     ``CoCa._generate_beamsearch`` decodes: the images repeated per beam before the image tower, then every step
     ``CoCa.forward`` (text tower + multimodal decoder) on every beam's whole prefix, no cache; the tokens are chosen
     by transformers 5's beam search (``GenerationMixin.generate(use_cache=False)``), which ours also runs with
     ``beam_scoring="transformers"``. The search is thus the same and only the model's work differs.
   In fp32, before timing, both sides' caption ids must be identical (greedy and beam).
2. Training, one step = forward + loss + backward + AdamW (open_clip's defaults) + ``zero_grad`` on the same batch of
   full 76-token captions: ours ``model(pixel_values, input_ids, labels=input_ids).loss`` against open_clip's
   ``model(image, text)`` + ``open_clip.loss.CoCaLoss(caption_loss_weight=2, clip_loss_weight=1)``, the two terms
   summed as its trainer sums them. Both fp32 losses must agree before timing. On CUDA the weights stay fp32 under
   ``--dtype`` autocast with fused AdamW (open_clip's ``--precision amp_bf16``); captioning casts the weights.

Timing alternates the contenders in one process (``benchmarks/common.py``); the ratio is the median of the per-round
throughput ratios hf_vlp/open_clip (above 1 = ours faster). Each side's first untimed call (the ids check, the first
optimiser step, which allocates AdamW's state) counts as the first of ``--warmup`` calls. On CPU the process CPU time
of the same calls gives a second ratio, little touched by other jobs sharing the cores (best read at ``--threads 1``).

    python benchmarks/bench_coca.py --threads 1    # CPU fp32: coca_ViT-B-32, caption batch 2, train batch 4, 3 rounds
    python benchmarks/bench_coca.py --parts caption --decoding beam --beams 6
    python benchmarks/bench_coca.py --device cuda --json out/bench_coca_gpu.json   # bf16, batch 32 / 128, 10 rounds
    python benchmarks/bench_coca.py --smoke        # tiny model, one round: a wiring check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/bench_coca.py``
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import CausalLMOutput  # noqa: E402

from benchmarks.bench_albef import autocast_context  # noqa: E402
from benchmarks.bench_train_clip import first_step_peak_memory, make_optimizer  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Summary,
    format_table,
    model_comparison_parser,
    parameter_count,
    parse_comparison_args,
    per_round_ratios,
    random_clip_batch,
    ratio_line,
    ratio_of_minimums,
    report,
    resolve_device,
    resolve_dtype,
    run_alternating,
    set_threads,
    synchronize,
)
from hf_vlp.generation.beam_scoring import pad_after_end  # noqa: E402

# open_clip model configs: the released base CoCa's (open_clip's model_configs/coca_ViT-B-32.json, read from the
# installed package) and a tiny one of the same layout (the coca reference fixture's sizes) for the wiring check
SMOKE_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 24, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_heads": 4, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 2, "embed_cls": True,
                 "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 2,
                       "attn_pooler_heads": 4},
    "custom_text": True,
}
PRESETS = ("coca_ViT-B-32", "smoke")
DEFAULTS = {
    "cpu": dict(batch=2, train_batch=4, rounds=3, warmup=1, dtype="fp32"),
    "cuda": dict(batch=32, train_batch=128, rounds=10, warmup=2, dtype="bf16"),
}
CAPTION_LOSS_WEIGHT, CLIP_LOSS_WEIGHT = 2.0, 1.0  # open_clip's trainer defaults (and ours)
LOSS_ATOL = 1e-4
CHECK_ROWS = 4  # the fp32 CPU checks run on the first images / pairs only: large GPU batches stay cheap to check
GREEDY_PEER, BEAM_PEER = "open_clip", "open_clip_uncached_beam"
OPEN_CLIP_GENERATE_PATCH = (
    "open_clip.coca_model._has_transformers = True; open_clip.coca_model.GENERATION_TYPES['top_k'] = "
    "transformers.TopKLogitsWarper (open_clip 3.3.0 disables generate under transformers 5), restored afterwards"
)
GREEDY_PEER_DESCRIPTION = (
    "open_clip 3.3.0's CoCa.generate(generation_type='top_k', top_k=1): image tower once, then every step the text "
    "tower and the multimodal decoder on the whole prefix (no key/value cache)"
)
BEAM_PEER_DESCRIPTION = (
    "open_clip's CoCa decoded as CoCa._generate_beamsearch decodes (images repeated per beam before the image tower; "
    "every step CoCa.forward on every beam's whole prefix, no key/value cache), tokens chosen by transformers 5's "
    "beam search (generate(use_cache=False)); open_clip 3.3.0's own beam search cannot run under transformers 5"
)


def open_clip_config(preset: str) -> dict[str, Any]:
    """The open_clip model-config JSON of ``preset``."""
    if preset == "smoke":
        return json.loads(json.dumps(SMOKE_CONFIG))
    import open_clip

    config = open_clip.get_model_config(preset)
    if config is None:
        raise SystemExit(f"open_clip {open_clip.__version__} has no model config {preset!r}")
    return config


def build_open_clip(config: dict[str, Any], seed: int) -> torch.nn.Module:
    """A random open_clip ``CoCa`` of ``config`` with its vocabulary projection initialised (open_clip leaves it as
    ``torch.empty`` memory: ``MultimodalTransformer.init_parameters`` is never called)."""
    from open_clip.coca_model import CoCa

    settings = {key: value for key, value in config.items() if key != "custom_text"}
    torch.manual_seed(seed)
    model = CoCa(**settings)
    projection = model.text_decoder.text_projection
    with torch.no_grad():
        projection.normal_(std=projection.shape[0] ** -0.5)
    return model


def convert(theirs: torch.nn.Module, config: dict[str, Any]) -> torch.nn.Module:
    """hf_vlp's ``VlpCocaForConditionalGeneration`` with ``theirs``' exact weights, through ``conversion/convert_coca.py``
    (its ``state_dict`` saved as open_clip saves released weights, converted with ``config``)."""
    from conversion.convert_coca import convert_coca_checkpoint

    logging.getLogger("conversion.coca").setLevel(logging.ERROR)  # "no tokenizer" is expected: weights only
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = os.path.join(directory, "open_clip_pytorch_model.bin")
        torch.save(theirs.state_dict(), checkpoint)
        return convert_coca_checkpoint(checkpoint, model_config=config, head="captioning").model


def build_pair(preset: str, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(hf_vlp, open_clip) CoCa models of ``preset`` holding the same random weights, checked to be the same size."""
    config = open_clip_config(preset)
    theirs = build_open_clip(config, seed)
    ours = convert(theirs, config)
    counts = {"hf_vlp": parameter_count(ours), "open_clip": parameter_count(theirs)}
    if counts["hf_vlp"] != counts["open_clip"]:
        raise SystemExit(f"The converted model's size differs from open_clip's: parameter counts {counts}")
    return ours, theirs


def special_ids(ours: torch.nn.Module) -> dict[str, int]:
    """Start-of-text, end-of-text and pad ids (the converted config's, which open_clip's ``generate`` is given)."""
    text = ours.config.text_config
    return {"bos": text.bos_token_id, "eos": text.eos_token_id, "pad": text.pad_token_id}


def random_batch(ours: torch.nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and full-length caption rows ``[SOT, tokens..., EOT, 0...]`` for ``ours``' sizes."""
    return random_clip_batch(ours.config, batch, seed)


# --------------------------------------------------------------------------------------------------- timing


def alternate(
    steps: dict[str, Callable[[], Any]], args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]] | None]:
    """``run_alternating`` after one untimed call of each step already made (the ids check, the first training step),
    which counts as the first of ``--warmup`` calls. Returns wall seconds per round and, on CPU, the process CPU
    seconds of the same calls: a second opinion where other jobs share the cores (a process waiting for a core
    accrues wall time, not CPU time)."""
    if device.type != "cpu":
        return run_alternating(steps, warmup=max(args.warmup - 1, 0), rounds=args.rounds, device=device), None
    cpu_seconds: dict[str, list[float]] = {name: [] for name in steps}

    def counted(name: str, step: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            start = time.process_time()
            result = step()
            cpu_seconds[name].append(time.process_time() - start)
            return result

        return call

    times = run_alternating(
        {name: counted(name, step) for name, step in steps.items()},
        warmup=max(args.warmup - 1, 0), rounds=args.rounds, device=device,
    )
    return times, {name: seconds[-args.rounds:] for name, seconds in cpu_seconds.items()}  # the timed rounds


def cpu_time_fields(
    cpu_seconds: dict[str, list[float]] | None, peer: str
) -> tuple[dict[str, Any], str]:
    """JSON fields and a printed line for the process-CPU-time ratio peer/hf_vlp (``{}`` and ``""`` off CPU)."""
    if cpu_seconds is None:
        return {}, ""
    ratios = Summary.of(per_round_ratios(cpu_seconds[peer], cpu_seconds["hf_vlp"]))
    fields = {
        "ratio_process_cpu_time_peer_over_hf_vlp": ratios.to_dict(),
        "process_cpu_seconds": cpu_seconds,
    }
    line = (f"  (process CPU time {peer}/hf_vlp: {ratios.median:.3f}, per-round range {ratios.min:.3f}-"
            f"{ratios.max:.3f}; best calls {ratio_of_minimums(cpu_seconds[peer], cpu_seconds['hf_vlp']):.3f})")
    return fields, line


# --------------------------------------------------------------------------------------------------- captioning


@contextlib.contextmanager
def open_clip_generate_enabled() -> Iterator[None]:
    """Re-enable open_clip 3.3.0's top-k ``CoCa.generate`` path under transformers 5 (see the module docstring)."""
    import transformers
    from open_clip import coca_model

    saved = coca_model._has_transformers, coca_model.GENERATION_TYPES["top_k"]
    coca_model._has_transformers, coca_model.GENERATION_TYPES["top_k"] = True, transformers.TopKLogitsWarper
    try:
        yield
    finally:
        coca_model._has_transformers, coca_model.GENERATION_TYPES["top_k"] = saved


@dataclass
class PerBeamImages:
    """open_clip's image outputs for images already repeated per beam: not a tensor, so ``generate`` does not repeat
    them again (and, with no cache, nothing is reordered with the beams: a beam's copy is its image's)."""

    latent: torch.Tensor
    tokens: torch.Tensor


class OpenClipUncachedBeamSearch(PreTrainedModel, GenerationMixin):
    """The beam-search peer (see ``BEAM_PEER_DESCRIPTION``): open_clip's ``CoCa`` as ``coca``, every step its forward
    on the whole prefix of every beam, transformers' beam search choosing the tokens."""

    main_input_name = "input_ids"

    def __init__(self, coca: torch.nn.Module, generation_config: GenerationConfig) -> None:
        super().__init__(PretrainedConfig())
        self.coca = coca
        self.generation_config = generation_config

    def forward(self, input_ids: torch.Tensor, images: PerBeamImages, **kwargs: Any) -> CausalLMOutput:
        output = self.coca(None, input_ids, image_latent=images.latent, image_embs=images.tokens, output_labels=False)
        return CausalLMOutput(logits=output["logits"])

    def prepare_inputs_for_generation(
        self, input_ids: torch.Tensor, images: PerBeamImages | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return {"input_ids": input_ids, "images": images}

    @torch.no_grad()
    def caption(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Caption ids ``[B, T]``: start-of-text first, pads after end-of-text (as open_clip's beam search returns)."""
        config = self.generation_config
        latent, tokens = self.coca._encode_image(pixel_values.repeat_interleave(config.num_beams, dim=0))
        start = torch.full((pixel_values.shape[0], 1), config.bos_token_id, dtype=torch.long, device=latent.device)
        ids = self.generate(input_ids=start, images=PerBeamImages(latent, tokens), generation_config=config)
        return pad_after_end(ids, 1, torch.tensor([config.eos_token_id]), config.pad_token_id)


def decoding_settings(args: argparse.Namespace, decoding: str) -> dict[str, Any]:
    """What both sides of ``decoding`` are asked for (ours' ``generate`` keywords)."""
    beams = 1 if decoding == "greedy" else args.beams
    return dict(num_beams=beams, do_sample=False, max_length=args.seq_len, min_length=args.min_len)


def caption_steps(
    ours: torch.nn.Module,
    theirs: torch.nn.Module,
    pixel_values: torch.Tensor,
    args: argparse.Namespace,
    decoding: str,
) -> dict[str, Callable[[], torch.Tensor]]:
    """One captioning call per side (image tower + decoding, under ``no_grad``) for ``decoding``."""
    ids, settings = special_ids(ours), decoding_settings(args, decoding)
    if decoding == "greedy":

        def ours_step() -> torch.Tensor:
            return ours.generate(pixel_values, **settings)

        def theirs_step() -> torch.Tensor:
            with torch.no_grad():
                return theirs.generate(
                    pixel_values, generation_type="top_k", top_k=1, seq_len=args.seq_len, min_seq_len=args.min_len,
                    sot_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                )

        return {"hf_vlp": ours_step, GREEDY_PEER: theirs_step}
    peer = OpenClipUncachedBeamSearch(theirs, GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], forced_eos_token_id=ids["eos"],
        use_cache=False, **settings,
    ))

    def ours_beam_step() -> torch.Tensor:
        return ours.generate(pixel_values, beam_scoring="transformers", **settings)

    return {"hf_vlp": ours_beam_step, BEAM_PEER: lambda: peer.caption(pixel_values)}


def check_equal_ids(steps: dict[str, Callable[[], torch.Tensor]]) -> tuple[torch.Tensor, bool]:
    """Both sides' caption ids (ours first) and whether they are equal."""
    ours, theirs = (step().cpu() for step in steps.values())
    return ours, ours.shape == theirs.shape and bool(torch.equal(ours, theirs))


def bench_captioning(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    ours, theirs = build_pair(args.preset, args.seed)
    ours.eval(), theirs.eval()
    pixel_values = random_batch(ours, args.batch, args.seed)[0]
    timed_in_fp32_on_cpu = device.type == "cpu" and dtype == torch.float32
    results = []
    with open_clip_generate_enabled():
        if not timed_in_fp32_on_cpu:  # fp32 agreement first, on the CPU weights: the output ids must be identical
            for decoding in args.decoding:
                steps = caption_steps(ours, theirs, pixel_values[:CHECK_ROWS], args, decoding)
                generated, equal = check_equal_ids(steps)
                require_equal_ids(args, decoding, generated, equal, ours.config._attn_implementation)
            ours.to(device=device, dtype=dtype)
            theirs.to(device=device, dtype=dtype)
            pixel_values = pixel_values.to(device=device, dtype=dtype)
        for kernel in args.ours_attn:
            ours.set_attn_implementation(kernel)
            for decoding in args.decoding:
                steps = caption_steps(ours, theirs, pixel_values, args, decoding)
                # untimed, and the first warm-up call; in bf16/fp16 the ids may legitimately drift
                generated, equal_in_dtype = check_equal_ids(steps)
                if timed_in_fp32_on_cpu:
                    require_equal_ids(args, decoding, generated, equal_in_dtype, kernel)
                peer = BEAM_PEER if decoding == "beam" else GREEDY_PEER
                times, cpu_seconds = alternate(steps, args, device)
                ratios = Summary.of(per_round_ratios(times[peer], times["hf_vlp"]))
                label = f"{args.preset} caption-{decoding_label(args, decoding)} ours-{kernel}"
                print(ratio_line(label, "hf_vlp", peer, ratios, "images/s"))
                cpu_fields, cpu_line = cpu_time_fields(cpu_seconds, peer)
                if cpu_line:
                    print(cpu_line)
                results.append({
                    "preset": args.preset,
                    "ours_attention": kernel,
                    "decoding": decoding,
                    "peer": peer,
                    "peer_description": BEAM_PEER_DESCRIPTION if decoding == "beam" else GREEDY_PEER_DESCRIPTION,
                    "batch": args.batch,
                    "settings": {**decoding_settings(args, decoding), "open_clip_seq_len": args.seq_len,
                                 "open_clip_min_seq_len": args.min_len},
                    "ours_beam_scoring": "transformers" if decoding == "beam" else None,
                    "generated_shape": list(generated.shape),
                    "images_per_second": {name: args.batch / Summary.of(seconds).median
                                          for name, seconds in times.items()},
                    "call_ms": {name: Summary.of(seconds).scaled(1e3).to_dict() for name, seconds in times.items()},
                    "ratio_images_per_second_hf_vlp_over_peer": ratios.to_dict(),
                    "ratio_of_minimums": ratio_of_minimums(times[peer], times["hf_vlp"]),
                    **cpu_fields,
                    "ids_equal_fp32": True,  # checked above: unequal ids stop the script
                    "ids_equal_in_timed_dtype": equal_in_dtype,
                    "raw_seconds": times,
                })
    return results


def require_equal_ids(
    args: argparse.Namespace, decoding: str, generated: torch.Tensor, equal: bool, kernel: str
) -> None:
    """Stop (nothing timed) unless both sides' fp32 caption ids are equal; print the check."""
    if not equal:
        raise SystemExit(f"hf_vlp (attention {kernel}) and open_clip generated different {decoding} caption ids in "
                         "fp32; nothing was timed.")
    print(f"[{args.preset}] fp32 {decoding_label(args, decoding)} caption ids equal (ours {kernel}): "
          f"{tuple(generated.shape)}")


def decoding_label(args: argparse.Namespace, decoding: str) -> str:
    return "greedy" if decoding == "greedy" else f"beam{args.beams}"


def caption_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        rates, ratio, peer = result["images_per_second"], result["ratio_images_per_second_hf_vlp_over_peer"], result["peer"]
        settings = result["settings"]
        rows.append([
            result["preset"], result["ours_attention"], f"{result['decoding']} (beams {settings['num_beams']})",
            result["batch"], peer, f"{rates['hf_vlp']:.3f}", f"{rates[peer]:.3f}", f"{ratio['median']:.3f}",
            f"{ratio['q1']:.3f}-{ratio['q3']:.3f}", f"{result['ratio_of_minimums']:.3f}",
            result["ids_equal_in_timed_dtype"],
        ])
    headers = ["preset", "ours attn", "decoding", "batch", "peer", "hf_vlp img/s", "peer img/s", "ratio ours/peer",
               "ratio IQR", "ratio of best", "ids equal"]
    return format_table(headers, rows)


# --------------------------------------------------------------------------------------------------- training


def coca_loss() -> torch.nn.Module:
    from open_clip.loss import CoCaLoss

    return CoCaLoss(caption_loss_weight=CAPTION_LOSS_WEIGHT, clip_loss_weight=CLIP_LOSS_WEIGHT)


def open_clip_losses(
    model: torch.nn.Module, loss_fn: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """open_clip's training forward: ``{"contrastive_loss", "caption_loss"}``, each already weighted."""
    return loss_fn(**model(pixel_values, input_ids), output_dict=True)


def check_losses(
    ours: torch.nn.Module, theirs: torch.nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> dict[str, dict[str, float]]:
    """fp32 loss terms of both models on the same pairs; they must agree within ``LOSS_ATOL``."""
    if ours.config.caption_loss_weight != CAPTION_LOSS_WEIGHT or ours.config.contrastive_loss_weight != CLIP_LOSS_WEIGHT:
        raise SystemExit("the converted config's loss weights are not open_clip's trainer defaults (2.0 and 1.0)")
    with torch.no_grad():
        theirs_terms = open_clip_losses(theirs, coca_loss(), pixel_values, input_ids)
        output = ours(pixel_values=pixel_values, input_ids=input_ids, labels=input_ids)
    losses = {
        "hf_vlp": {"contrastive_loss": float(output.contrastive_loss), "caption_loss": float(output.caption_loss)},
        "open_clip": {name: float(value) for name, value in theirs_terms.items()},
    }
    if any(abs(losses["hf_vlp"][name] - value) > LOSS_ATOL for name, value in losses["open_clip"].items()):
        raise SystemExit(f"hf_vlp and open_clip disagree with identical weights: losses {losses}; nothing was timed.")
    return losses


def training_steps(
    ours: torch.nn.Module,
    theirs: torch.nn.Module,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """One optimisation step per side (forward and loss under ``dtype`` autocast, backward, AdamW, ``zero_grad``) and
    the lists the steps append their losses to."""
    loss_fn = coca_loss()
    losses: dict[str, list[torch.Tensor]] = {"hf_vlp": [], "open_clip": []}

    def forward_ours() -> torch.Tensor:
        return ours(pixel_values=pixel_values, input_ids=input_ids, labels=input_ids).loss

    def forward_theirs() -> torch.Tensor:
        return sum(open_clip_losses(theirs, loss_fn, pixel_values, input_ids).values())

    def make_step(name: str, model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        optimizer = make_optimizer(model, args.lr, device)

        def step() -> torch.Tensor:
            with autocast_context(device, dtype):
                loss = forward()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[name].append(loss.detach())
            return losses[name][-1]

        return step

    steps = {"hf_vlp": make_step("hf_vlp", ours, forward_ours), "open_clip": make_step("open_clip", theirs, forward_theirs)}
    return steps, losses


def bench_training(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    results = []
    for kernel in args.ours_attn:
        ours, theirs = build_pair(args.preset, args.seed)  # fresh weights: every kernel starts from the same point
        ours.train(), theirs.train()
        ours.set_attn_implementation(kernel)
        pixel_values, input_ids = random_batch(ours, args.train_batch, args.seed)
        initial = check_losses(ours, theirs, pixel_values[:CHECK_ROWS], input_ids[:CHECK_ROWS])
        print(f"[{args.preset}] fp32 losses agree on {min(CHECK_ROWS, args.train_batch)} pairs: " + "; ".join(
            f"{name} " + ", ".join(f"{term} {value:.5f}" for term, value in terms.items())
            for name, terms in initial.items()
        ))
        ours.to(device), theirs.to(device)
        pixel_values, input_ids = pixel_values.to(device), input_ids.to(device)
        steps, losses = training_steps(ours, theirs, pixel_values, input_ids, args, device, dtype)
        # the first step (untimed, the first warm-up call) allocates AdamW's state; its peak GPU memory is reported
        peak_memory = {name: first_step_peak_memory(step, device) for name, step in steps.items()}
        times, cpu_seconds = alternate(steps, args, device)
        synchronize(device)
        final = {name: float(values[-1]) for name, values in losses.items()}
        if not all(torch.isfinite(torch.tensor(list(final.values())))):
            raise SystemExit(f"a training loss is not finite: {final}")
        ratios = Summary.of(per_round_ratios(times["open_clip"], times["hf_vlp"]))
        print(ratio_line(f"{args.preset} train ours-{kernel}", "hf_vlp", "open_clip", ratios, "samples/s"))
        cpu_fields, cpu_line = cpu_time_fields(cpu_seconds, "open_clip")
        if cpu_line:
            print(cpu_line)
        results.append({
            "preset": args.preset,
            "ours_attention": kernel,
            "batch": args.train_batch,
            "text_length": int(input_ids.shape[1]),
            "precision": "fp32" if dtype == torch.float32 else f"{args.dtype} autocast",
            "loss": f"contrastive x {CLIP_LOSS_WEIGHT} + caption x {CAPTION_LOSS_WEIGHT} (open_clip.loss.CoCaLoss)",
            "parameters": parameter_count(ours),
            "initial_losses_fp32": initial,
            "samples_per_second": {name: args.train_batch / Summary.of(seconds).median for name, seconds in times.items()},
            "step_ms": {name: Summary.of(seconds).scaled(1e3).to_dict() for name, seconds in times.items()},
            "ratio_samples_per_second_hf_vlp_over_open_clip": ratios.to_dict(),
            "ratio_of_minimums": ratio_of_minimums(times["open_clip"], times["hf_vlp"]),
            **cpu_fields,
            "peak_memory_gib": peak_memory,
            "final_loss": final,
            "raw_seconds": times,
        })
        del ours, theirs, steps
    return results


def training_table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        rates, steps = result["samples_per_second"], result["step_ms"]
        ratio = result["ratio_samples_per_second_hf_vlp_over_open_clip"]
        rows.append([
            result["preset"], result["ours_attention"], result["batch"], result["precision"],
            f"{rates['hf_vlp']:.3f}", f"{rates['open_clip']:.3f}", f"{ratio['median']:.3f}",
            f"{ratio['q1']:.3f}-{ratio['q3']:.3f}", f"{result['ratio_of_minimums']:.3f}",
            f"{steps['hf_vlp']['median'] / 1e3:.2f}", f"{steps['open_clip']['median'] / 1e3:.2f}",
        ])
    headers = ["preset", "ours attn", "batch", "precision", "hf_vlp samples/s", "open_clip samples/s",
               "ratio ours/open_clip", "ratio IQR", "ratio of best", "hf_vlp step s", "open_clip step s"]
    return format_table(headers, rows)


# --------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = model_comparison_parser(__doc__.split("\n\n")[0], PRESETS, "coca_ViT-B-32", 2, "images per caption call")
    parser.add_argument("--parts", nargs="+", choices=("caption", "train"), default=["caption", "train"])
    parser.add_argument("--decoding", nargs="+", choices=("greedy", "beam"), default=["greedy", "beam"])
    parser.add_argument("--beams", type=int, default=3, help="beams of the beam-search comparison")
    parser.add_argument("--seq-len", type=int, default=30,
                        help="caption length limit, start-of-text included (open_clip's seq_len, ours max_length)")
    parser.add_argument("--min-len", type=int, default=5, help="open_clip's min_seq_len, ours min_length")
    parser.add_argument("--train-batch", type=int, default=None, help="pairs per training step (default: by device)")
    parser.add_argument("--lr", type=float, default=5e-4)
    device_type = torch.device(parser.parse_known_args(argv)[0].device).type
    parser.set_defaults(**DEFAULTS["cuda" if device_type == "cuda" else "cpu"])
    args = parse_comparison_args(parser, argv)
    if args.smoke:  # the fixture's generation length: 11 decoding steps
        args.train_batch, args.seq_len = 2, 12
    args.parts, args.decoding = list(dict.fromkeys(args.parts)), list(dict.fromkeys(args.decoding))
    context = open_clip_config(args.preset)["text_cfg"]["context_length"]
    if args.beams < 2:
        parser.error("--beams must be at least 2 (greedy decoding is --decoding greedy)")
    if not 1 <= args.min_len < args.seq_len <= context:
        parser.error(f"need 1 <= --min-len < --seq-len <= {context} (open_clip asserts seq_len > min_seq_len)")
    if args.train_batch < 2:
        parser.error("--train-batch must be at least 2 (a contrastive batch)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    threads = set_threads(args.threads)
    print(f"bench_coca: device {device}, dtype {args.dtype}, threads {threads}, preset {args.preset}, parts "
          f"{' '.join(args.parts)}, caption batch {args.batch} ({' '.join(args.decoding)}, beams {args.beams}, "
          f"seq_len {args.seq_len}, min_len {args.min_len}), train batch {args.train_batch}, rounds {args.rounds}")
    results: dict[str, Any] = {}
    tables = []
    if "caption" in args.parts:
        results["caption"] = bench_captioning(args, device, dtype)
        results["open_clip_generate_patch"] = OPEN_CLIP_GENERATE_PATCH
        tables.append(caption_table(results["caption"]))
    if "train" in args.parts:
        results["train"] = bench_training(args, device, dtype)
        tables.append(training_table(results["train"]))
    return report("bench_coca", device, args, "\n\n".join(tables), **results)


if __name__ == "__main__":
    main()
