"""``hf-vlp convert clip|albef|blip|vilt|vlmo|coca ...``: the families' command lines behind the entry point."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from hf_vlp import cli
from hf_vlp.models.albef import VlpAlbefForMaskedLM, VlpAlbefProcessor
from hf_vlp.models.blip import VlpBlipForConditionalGeneration, VlpBlipProcessor
from hf_vlp.models.clip import VlpClipModel

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "originals"


def test_convert_runs_each_family_and_records_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    albef = FIXTURES / "albef_pretrain"
    arguments = ["--checkpoint", str(albef / "checkpoint.pth"), "--original-config", str(albef / "original_config.json")]
    status = cli.main(["convert", "albef", *arguments, "--output", str(tmp_path / "albef"), "--tokenizer",
                       str(albef / "vocab.txt"), "--head", "masked_lm", "--verify"])
    assert status == 0, capsys.readouterr().err
    assert isinstance(VlpAlbefForMaskedLM.from_pretrained(tmp_path / "albef"), VlpAlbefForMaskedLM)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "albef"), VlpAlbefProcessor)
    assert "hf-vlp convert albef --checkpoint" in (tmp_path / "albef" / "README.md").read_text()

    blip = FIXTURES / "blip_caption"
    status = cli.main(["convert", "blip", "--checkpoint", str(blip / "checkpoint.pth"), "--output", str(tmp_path / "blip"),
                       "--original-config", str(blip / "original_config.json"), "--tokenizer", str(blip / "vocab.txt")])
    assert status == 0, capsys.readouterr().err
    assert isinstance(VlpBlipForConditionalGeneration.from_pretrained(tmp_path / "blip"), VlpBlipForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "blip"), VlpBlipProcessor)
    assert json.loads((tmp_path / "blip" / "generation_config.json").read_text())

    clip = FIXTURES / "clip_vit"
    status = cli.main(["convert", "clip", "--checkpoint", str(clip / "checkpoint.pt"), "--output", str(tmp_path / "clip"),
                       "--original-config", str(clip / "original_config.json")])
    assert status == 0, capsys.readouterr().err
    assert isinstance(AutoModel.from_pretrained(tmp_path / "clip", dtype=torch.float32), VlpClipModel)
    assert "hf-vlp convert clip --checkpoint" in (tmp_path / "clip" / "README.md").read_text()


def test_convert_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["convert"]) == 2
    assert "name a family, one of ['clip', 'albef', 'blip', 'vilt', 'vlmo', 'coca']" in capsys.readouterr().err
    assert cli.main(["convert", "flava", "--checkpoint", "x"]) == 2
    assert "(got 'flava')" in capsys.readouterr().err
    status = cli.main(["convert", "clip", "--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "out")])
    assert status == 1 and "Checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert "hf-vlp convert clip|albef|blip|vilt|vlmo|coca" in cli._usage()


@pytest.mark.parametrize("family", ["clip", "albef", "blip", "coca"])
def test_script_exits_non_zero_on_error(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python conversion/convert_<family>.py`` keeps working; its ``__main__`` block runs in-process here (a
    subprocess would pay the package import again)."""
    script = f"convert_{family}.py"
    argv = [script, "--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "conversion" / script), run_name="__main__")
    assert exited.value.code == 1
    stderr = capsys.readouterr().err
    assert "Checkpoint not found" in stderr and "missing.pt" in stderr
    assert not (tmp_path / "out").exists()
