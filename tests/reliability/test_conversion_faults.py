"""Fault injection on the converters (issue 11): each test names the item it covers and fails on the code before it.

Every surface must end in one of two ways: a converted folder, or a one-line ``error: ...`` with exit status 1 (2 for
``argparse``) that names the file or folder and why - never a traceback, never silently wrong weights, never lost data.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import conversion.convert_albef as convert_albef
import conversion.convert_blip as convert_blip
import conversion.convert_clip as convert_clip
from conversion.common import MARKER_FILE, run_cli

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "originals"
CLIP_VIT, ALBEF, BLIP = FIXTURES / "clip_vit", FIXTURES / "albef_pretrain", FIXTURES / "blip_caption"
BPE = CLIP_VIT / "bpe_simple_vocab_truncated.txt.gz"
MAINS = {"clip": convert_clip.main, "albef": convert_albef.main, "blip": convert_blip.main}
# the arguments each family needs besides --checkpoint/--output to convert its fixture
SETTINGS = {
    "clip": [],
    "albef": ["--original-config", str(ALBEF / "original_config.json")],
    "blip": ["--original-config", str(BLIP / "original_config.json"), "--tokenizer", str(BLIP / "vocab.txt")],
}
CHECKPOINTS = {"clip": CLIP_VIT / "checkpoint.pt", "albef": ALBEF / "checkpoint.pth", "blip": BLIP / "checkpoint.pth"}


def one_line_error(capsys: pytest.CaptureFixture[str], family: str, *arguments: str | Path) -> str:
    """Run a converter's command line in-process (an exception escaping it fails the test: a traceback); assert it
    exits with status 1 and a single ``error:`` line; return that line."""
    status = run_cli(MAINS[family], [str(argument) for argument in arguments])
    error = capsys.readouterr().err.strip()
    assert status == 1, error
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error, error
    return error


def albef_state() -> dict[str, torch.Tensor]:
    return torch.load(ALBEF / "checkpoint.pth", weights_only=True)["model"]


def save_albef(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state, "config": {}, "epoch": 0}, path)
    return path


# --------------------------------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("family", ["clip", "albef", "blip"])
def test_item1_overwrite_never_deletes_the_source_or_a_folder_it_did_not_write(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    checkpoint = shutil.copy(CHECKPOINTS[family], out / "src" / CHECKPOINTS[family].name)
    (out / "notes.txt").write_text("unrelated")
    error = one_line_error(capsys, family, "--checkpoint", checkpoint, "--output", out, "--overwrite", *SETTINGS[family])
    assert f"Output {str(out)!r} holds an input of this conversion" in error
    assert Path(checkpoint).is_file() and (out / "notes.txt").read_text() == "unrelated"

    # a config or tokenizer inside the output counts as much as the checkpoint
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for flag in ("--original-config", "--tokenizer"):
        if flag in SETTINGS[family]:
            given = Path(SETTINGS[family][SETTINGS[family].index(flag) + 1])
            copied = shutil.copy(given, inputs / given.name)
            settings = [str(copied) if value == str(given) else value for value in SETTINGS[family]]
            error = one_line_error(capsys, family, "--checkpoint", CHECKPOINTS[family], "--output", inputs,
                                   "--overwrite", *settings)
            assert "holds an input of this conversion" in error and Path(copied).is_file()

    # a folder no converter wrote (no marker) is never replaced, not even with --overwrite ...
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("unrelated")
    error = one_line_error(capsys, family, "--checkpoint", CHECKPOINTS[family], "--output", foreign, "--overwrite",
                           *SETTINGS[family])
    assert f"{str(foreign)!r} was not written by a converter (no {MARKER_FILE})" in error
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]
    # ... while a converted folder is
    converted = tmp_path / "converted"
    arguments = ["--checkpoint", str(CHECKPOINTS[family]), "--output", str(converted), *SETTINGS[family]]
    assert run_cli(MAINS[family], arguments) == 0
    assert json.loads((converted / MARKER_FILE).read_text())["created_by"] == "hf_vlp.conversion"
    assert run_cli(MAINS[family], [*arguments, "--overwrite"]) == 0 and (converted / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------- item 3

EVIL_MODULE = '''
import torch
from typing import Tuple


class Evil(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        # creates MARKER (a shared file mapping) whenever torch.jit.load restores the module
        self.w = state[0] + torch.from_file(MARKER, True, 2) * 0.0
        self.training = state[1]
'''


class OpenOnUnpickle:
    """A pickle payload: unpickling it calls ``builtins.open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def scripted_archive_with_setstate(tmp_path: Path, marker: Path) -> Path:
    source = tmp_path / "evil_setstate_module.py"
    source.write_text(EVIL_MODULE.replace("MARKER", repr(str(marker))))
    spec = importlib.util.spec_from_file_location("evil_setstate_module", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    archive = tmp_path / "evil_setstate.pt"
    torch.jit.script(module.Evil()).save(str(archive))
    assert not marker.exists()
    return archive


def archive_with_pickle_payload(tmp_path: Path, marker: Path) -> Path:
    """The CLIP fixture's TorchScript archive with its data.pkl replaced by a payload."""
    archive = tmp_path / "evil_pickle.pt"
    with zipfile.ZipFile(CLIP_VIT / "checkpoint_jit.pt") as original, zipfile.ZipFile(archive, "w") as evil:
        for name in original.namelist():
            data = pickle.dumps(OpenOnUnpickle(marker), protocol=2) if name.endswith("/data.pkl") else original.read(name)
            evil.writestr(name, data)
    return archive


def test_item3_reading_a_torchscript_archive_runs_no_code_from_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    archive = scripted_archive_with_setstate(tmp_path, marker)
    status = run_cli(convert_clip.main, ["--checkpoint", str(archive), "--output", str(tmp_path / "out")])
    assert not marker.exists(), "the archive's __setstate__ ran"
    error = capsys.readouterr().err
    assert status == 1 and "defines __setstate__" in error and "--trust-torchscript" in error

    status = run_cli(convert_clip.main, ["--checkpoint", str(archive_with_pickle_payload(tmp_path, marker)),
                                         "--output", str(tmp_path / "out")])
    assert not marker.exists(), "the archive's pickle ran"
    error = capsys.readouterr().err
    assert status == 1 and "references the global io.open" in error and "--trust-torchscript" in error

    # a torch.save pickle is read with weights_only=True: its payload never runs either
    payload = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": OpenOnUnpickle(marker)}, payload)
    for family in ("clip", "albef", "blip"):
        assert "weights_only=True" in one_line_error(capsys, family, "--checkpoint", payload, "--output", tmp_path / "o")
        assert not marker.exists(), f"{family}: the checkpoint's pickle ran"

    # the opt-in flag is explained in --help, and does open the archive (running its code) when asked for
    with pytest.raises(SystemExit):
        convert_clip.parse_args(["--help"])
    assert "--trust-torchscript" in capsys.readouterr().out
    assert run_cli(convert_clip.main, ["--checkpoint", str(archive), "--output", str(tmp_path / "o"),
                                       "--trust-torchscript"]) == 1
    assert marker.exists()


def test_item3_every_torch_load_in_the_converters_is_weights_only() -> None:
    files = [*sorted((ROOT / "conversion").glob("*.py")), ROOT / "hf_vlp" / "utils" / "checkpoints.py"]
    calls = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    weights_only = [kw for kw in node.keywords if kw.arg == "weights_only"]
                    calls.append(f"{path.name}:{node.lineno}")
                    assert weights_only and getattr(weights_only[0].value, "value", None) is True, calls[-1]
    assert calls, "no torch.load call found: the check looks in the wrong place"


# --------------------------------------------------------------------------------------------------- item 9

QUERY = "text_encoder.bert.encoder.layer.0.attention.self.query.weight"
CROSS_KEY = "text_encoder.bert.encoder.layer.2.crossattention.self.key.weight"


@pytest.mark.parametrize(
    ("key", "edit", "expected"),
    [
        (QUERY, lambda t: torch.zeros(t.shape[0], t.shape[1] + 1), [QUERY + " [32, 33] float32", "do not fit"]),
        (QUERY, lambda t: torch.zeros(t.shape[0] + 1, t.shape[1]), [f"(part {QUERY}): expected [32, 32], got [33, 32]"]),
        (QUERY, lambda t: t.long(), [QUERY + " [32, 32] int64", "do not fit"]),
        (CROSS_KEY, lambda t: t[:-2], [f"(part {CROSS_KEY}): expected [32, 48], got [30, 48]"]),
    ],
    ids=["query-wrong-width", "query-wrong-rows", "query-int64", "cross-attention-key-wrong-rows"],
)
def test_item9_fused_query_key_value_parts_get_the_shape_and_dtype_checks(
    key: str, edit: Callable, expected: Sequence[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = albef_state()
    if key not in state:
        pytest.skip(f"the fixture has no {key}")
    state[key] = edit(state[key])
    checkpoint = save_albef(tmp_path / "edited.pth", state)
    status = run_cli(convert_albef.main, ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"),
                                          *SETTINGS["albef"]])
    error = capsys.readouterr().err
    assert status == 1 and error.startswith("error: ") and "Traceback" not in error
    for text in expected:
        assert text in error
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------- item 10


def read_only_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create folders in: a 0555 folder, or for root (whom modes do not stop)
    sysfs, where mkdir is refused."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    try:
        os.mkdir("/sys/hf_vlp_probe")
    except OSError:
        return Path("/sys")
    os.rmdir("/sys/hf_vlp_probe")
    pytest.skip("no directory here refuses writes to this user")


def truncated(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_item10_bad_inputs_and_outputs_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "out")
    configs = {
        "clip": {"transformer_heads": "two"},
        "albef": {**json.loads((ALBEF / "original_config.json").read_text()), "image_res": "big"},
        "blip": {**json.loads((BLIP / "original_config.json").read_text()), "image_size": 2.5},
    }
    for family, config in configs.items():  # a non-integer size in --original-config
        (tmp_path / f"{family}.json").write_text(json.dumps(config))
        error = one_line_error(capsys, family, "--checkpoint", CHECKPOINTS[family], "--output", out,
                               "--original-config", tmp_path / f"{family}.json")
        assert "must be a positive integer, got" in error
    nested = {**configs["albef"], "image_res": 16, "bert_config": {"num_attention_heads": "2"}}
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    error = one_line_error(capsys, "albef", "--checkpoint", CHECKPOINTS["albef"], "--output", out,
                           "--original-config", tmp_path / "nested.json")
    assert "'bert_config.num_attention_heads' must be a positive integer, got '2'" in error

    # --image-size 0: argparse's error, status 2
    with pytest.raises(SystemExit) as exited:
        run_cli(convert_albef.main, ["--checkpoint", str(CHECKPOINTS["albef"]), "--output", out, "--image-size", "0",
                                     *SETTINGS["albef"]])
    assert exited.value.code == 2 and "--image-size: must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(Exception, match="at least the patch size"):
        convert_albef.convert_albef_checkpoint(CHECKPOINTS["albef"], original_config=ALBEF / "original_config.json",
                                               image_size=1)

    for family in ("albef", "blip"):  # CLIP's BPE merges given as the BERT --tokenizer
        arguments = [value for value in SETTINGS[family] if value != str(BLIP / "vocab.txt") and value != "--tokenizer"]
        error = one_line_error(capsys, family, "--checkpoint", CHECKPOINTS[family], "--output", out, *arguments,
                               "--tokenizer", BPE)
        assert "is a gzip file" in error and "not a BERT WordPiece vocab.txt" in error

    # an output on a read-only directory
    unwritable = read_only_directory(tmp_path) / "converted"
    error = one_line_error(capsys, "clip", "--checkpoint", CHECKPOINTS["clip"], "--output", unwritable)
    assert "Cannot write output" in error and str(unwritable.parent) in error

    # an output that is (or contains) the working directory, or an input
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for output in ("..", ".", str(tmp_path)):
        error = one_line_error(capsys, "clip", "--checkpoint", CHECKPOINTS["clip"], "--output", output, "--overwrite")
        assert "is (or contains) the current directory" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["work", "read-only", *(f"{f}.json" for f in configs),
                                                                      "nested.json"])
    monkeypatch.chdir(ROOT)

    # truncated inputs: a torch.save zip, a safetensors file, a TorchScript archive
    pth = truncated(CHECKPOINTS["albef"], tmp_path / "truncated.pth")
    assert "damaged or truncated" in one_line_error(capsys, "albef", "--checkpoint", pth, "--output", out)
    weights = {key: value.clone().contiguous() for key, value in torch.load(CHECKPOINTS["clip"], weights_only=True).items()}
    save_file(weights, tmp_path / "clip.safetensors")
    safetensors = truncated(tmp_path / "clip.safetensors", tmp_path / "truncated.safetensors")
    assert "damaged or truncated" in one_line_error(capsys, "clip", "--checkpoint", safetensors, "--output", out)
    archive = truncated(CLIP_VIT / "checkpoint_jit.pt", tmp_path / "truncated_jit.pt")
    assert "damaged or truncated" in one_line_error(capsys, "clip", "--checkpoint", archive, "--output", out)
    assert not Path(out).exists()


# --------------------------------------------------------------------------------------------------- item 11


@pytest.mark.parametrize(
    ("family", "checkpoint", "expected"),
    [
        ("albef", BLIP / "checkpoint.pth", "a BLIP checkpoint"),
        ("albef", FIXTURES / "blip_pretrain" / "checkpoint.pth", "a BLIP checkpoint"),
        ("albef", FIXTURES / "blip_vqa" / "checkpoint.pth", "a BLIP checkpoint"),
        ("albef", CLIP_VIT / "checkpoint.pt", "a CLIP checkpoint"),
        ("blip", ALBEF / "checkpoint.pth", "an ALBEF checkpoint"),
        ("blip", FIXTURES / "albef_retrieval" / "checkpoint.pth", "an ALBEF checkpoint"),
        ("blip", FIXTURES / "albef_vqa" / "checkpoint.pth", "an ALBEF checkpoint"),
        ("blip", CLIP_VIT / "checkpoint.pt", "a CLIP checkpoint"),
        ("clip", ALBEF / "checkpoint.pth", "an ALBEF checkpoint"),
        ("clip", BLIP / "checkpoint.pth", "a BLIP checkpoint"),
    ],
    ids=lambda value: value.parent.name if isinstance(value, Path) else value,
)
def test_item11_a_checkpoint_of_another_family_names_the_converter_to_use(
    family: str, checkpoint: Path, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = one_line_error(capsys, family, "--checkpoint", checkpoint, "--output", tmp_path / "out")
    other = expected.split()[1].lower()
    assert f"looks like {expected}" in error
    assert f"use conversion/convert_{other}.py / hf-vlp convert {other}" in error


# --------------------------------------------------------------------------------------------------- item 12


def test_item12_non_finite_tensors_are_refused_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = torch.load(CHECKPOINTS["clip"], weights_only=True)
    clip["logit_scale"] = torch.tensor(float("inf"))
    clip["visual.proj"] = clip["visual.proj"].clone()
    clip["visual.proj"][0, 0] = float("nan")
    torch.save(clip, tmp_path / "clip_inf.pt")
    error = one_line_error(capsys, "clip", "--checkpoint", tmp_path / "clip_inf.pt", "--output", tmp_path / "out")
    assert "non-finite values (inf/NaN) in 2 tensors" in error and "--allow-non-finite" in error
    assert "visual.proj (nan)" in error and "logit_scale (inf)" in error

    albef = albef_state()
    albef[QUERY] = torch.full_like(albef[QUERY], float("nan"))
    checkpoint = save_albef(tmp_path / "albef_nan.pth", albef)
    error = one_line_error(capsys, "albef", "--checkpoint", checkpoint, "--output", tmp_path / "out",
                           *SETTINGS["albef"])
    assert f"{QUERY} (nan)" in error
    assert not (tmp_path / "out").exists()

    assert run_cli(convert_clip.main, ["--checkpoint", str(tmp_path / "clip_inf.pt"), "--output",
                                       str(tmp_path / "out"), "--allow-non-finite"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------- item 13


def test_item13_converted_folders_get_the_permissions_mkdir_would_give(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        assert run_cli(convert_clip.main, ["--checkpoint", str(CHECKPOINTS["clip"]), "--output", str(tmp_path / "out"),
                                           "--tokenizer", str(BPE)]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "out").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_item13_stale_temporary_folders_of_dead_runs_are_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    host = socket.gethostname()
    stale = tmp_path / f".out.converting-{dead_pid()}@{host}-0123abcd"
    live = tmp_path / f".out.converting-{os.getpid()}@{host}-4567cdef"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level("WARNING"):
        assert run_cli(convert_clip.main, ["--checkpoint", str(CHECKPOINTS["clip"]),
                                           "--output", str(tmp_path / "out")]) == 0
    assert not stale.exists() and f"Removed stale temporary folder {stale}" in caplog.text
    assert live.exists(), "the folder of a running conversion must be left alone"


def kill_while_writing(arguments: Sequence[str], parent: Path, name: str, timeout: float = 120) -> Path | None:
    """Start a converter, SIGKILL it as soon as its temporary ``.{name}.converting-*`` folder appears; return that
    folder (``None`` when the run finished first)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "conversion" / "convert_clip.py"), *arguments],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            found = [entry for entry in os.scandir(parent) if entry.name.startswith(f".{name}.converting-")]
            if found:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return Path(found[0].path)
            time.sleep(0.0005)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return None


@pytest.mark.slow
def test_item13_a_conversion_killed_while_writing_is_cleaned_up_by_the_next_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for attempt in range(3):
        name = f"out{attempt}"
        arguments = ["--checkpoint", str(CHECKPOINTS["clip"]), "--output", str(tmp_path / name), "--tokenizer", str(BPE)]
        leftover = kill_while_writing(arguments, tmp_path, name)
        if leftover is not None:
            break
    else:
        pytest.skip("the conversion finished before it could be killed while writing")
    assert leftover.is_dir() and not (tmp_path / name).exists()
    with caplog.at_level("WARNING"):
        assert run_cli(convert_clip.main, arguments) == 0
    assert not leftover.exists() and f"Removed stale temporary folder {leftover}" in caplog.text
    assert (tmp_path / name / "model.safetensors").is_file()
    assert not [entry for entry in tmp_path.iterdir() if ".converting-" in entry.name]
