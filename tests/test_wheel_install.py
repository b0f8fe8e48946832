"""A regular (non-editable) install works: ``pip install .`` into a fresh virtual environment, then, from outside the
source tree, convert an original checkpoint, train 5 steps (evaluated through the packaged ``evaluate`` metric
modules), save with a model card, push (uploads intercepted) and load — every file read from the installed wheel (model-card templates, the ``conversion`` package, packaged data)."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "originals" / "clip_vit"

# Runs in the fresh environment. The development checkout is usually installed editable into the base environment the
# venv inherits its dependencies from; its import hooks would resolve hf_vlp to the checkout, so they are removed
# first and hf_vlp, conversion and model_cards must come from the venv's site-packages.
SCRIPT = r'''
import json, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(type(f), "__module__", "")
                    and "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
fixture, work, site = sys.argv[1], sys.argv[2], sys.argv[3]

import conversion, hf_vlp, model_cards
for module in (conversion, hf_vlp, model_cards):
    assert os.path.realpath(module.__file__).startswith(os.path.realpath(site)), (module.__name__, module.__file__)

from conversion.convert_clip import convert_clip_checkpoint
converted = os.path.join(work, "converted")
convert_clip_checkpoint(os.path.join(fixture, "checkpoint.pt"), output=converted,
                        original_config=json.load(open(os.path.join(fixture, "original_config.json"))),
                        tokenizer=os.path.join(fixture, "bpe_simple_vocab_truncated.txt.gz"))

from hf_vlp.cli import main
trained = os.path.join(work, "trained")
status = main(["train", "clip", "--from-pretrained", converted, "--dataset", "synthetic-shapes:n=64,size=32",
               "--max-steps", "5", "--per-device-train-batch-size", "4", "--eval-max-samples", "16",
               "--save-strategy", "no", "--disable-tqdm", "true", "--output-dir", trained])
assert status == 0, status

import huggingface_hub
from huggingface_hub import HfApi, RepoUrl
uploads = []
HfApi.create_repo = lambda api, repo_id, **kwargs: RepoUrl("https://huggingface.co/" + repo_id)
HfApi.upload_folder = lambda api, *, repo_id, folder_path, **kwargs: uploads.append(
    sorted(p for p in os.listdir(folder_path))) or "commit"
from hf_vlp.integrations.hub import push_folder
push_folder(trained, "me/wheel-clip")

import transformers
model = transformers.AutoModel.from_pretrained(trained)
processor = transformers.AutoProcessor.from_pretrained(trained)
card = open(os.path.join(trained, "README.md"), encoding="utf-8").read()
print("RESULT " + json.dumps({
    "model": type(model).__module__ + "." + type(model).__name__,
    "processor": type(processor).__name__,
    "files": sorted(os.listdir(trained)),
    "card_has_metrics": "Not evaluated yet" not in card and "zero_shot_top1" in card,
    "pushed": uploads,
}))
'''


@pytest.mark.slow
def test_a_wheel_install_converts_trains_saves_and_loads(tmp_path):
    environment = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    site = next((environment / "lib").glob("python3*/site-packages"))
    # the venv has no pip of its own: the base pip installs the wheel it builds from the checkout into the venv
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-compile", "--quiet",
         "--target", str(site), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    installed = {path.name for path in site.iterdir()}
    assert {"hf_vlp", "conversion", "model_cards"} <= installed, installed
    assert sorted(path.name for path in (site / "model_cards").glob("*.md")) == [
        "albef.md", "blip.md", "clip.md", "coca.md", "vilt.md", "vlmo.md"]

    script = tmp_path / "use_installed.py"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run(
        [str(python), str(script), str(FIXTURE), str(work), str(site)], cwd=work, capture_output=True, text=True,
        timeout=600, env={**environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["model"] == "hf_vlp.models.clip.modeling_clip.VlpClipModel"
    assert result["processor"] == "VlpClipProcessor"
    assert {"model.safetensors", "config.json", "README.md", "metrics.json"} <= set(result["files"])
    assert result["card_has_metrics"]
    (pushed,) = result["pushed"]  # one commit: model, processor, card, record and the remote code
    assert {"model.safetensors", "config.json", "README.md", "processor_config.json", "hf_vlp_classes.py"} <= set(pushed)
