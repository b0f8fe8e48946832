"""Remote code: an exported folder loads with ``trust_remote_code=True`` in a process that cannot import hf_vlp, from
the folder and from a hub cache, and reproduces hf_vlp's processor outputs, forwards and generations; with hf_vlp
imported the Auto classes keep giving hf_vlp's own classes. Plus the export's contents, determinism and errors."""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, BertConfig, BertModel, BertTokenizer
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from hf_vlp import (
    VlpAlbefConfig,
    VlpAlbefForPretraining,
    VlpAlbefImageProcessor,
    VlpAlbefProcessor,
    VlpBlipConfig,
    VlpBlipForConditionalGeneration,
    VlpBlipImageProcessor,
    VlpBlipProcessor,
    VlpClipConfig,
    VlpClipImageProcessor,
    VlpClipModel,
    VlpClipProcessor,
    VlpCocaDecoderConfig,
    VlpCocaForConditionalGeneration,
    VlpCocaProcessor,
    VlpCocaVisionConfig,
    VlpCocaVisionModel,
)
from hf_vlp.integrations import remote_code
from hf_vlp.integrations.remote_code import ENTRY_MODULE, export_remote_code, find_registration, model_auto_map
from hf_vlp.integrations.source_bundle import REMOTE_DEPENDENCIES, BundleError, bundle_sources, undefined_names
from hf_vlp.models.blip import blip_special_token_ids
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.models.vilt import VlpViltForQuestionAnswering, VlpViltImageProcessor, VlpViltProcessor
from hf_vlp.models.vlmo import VlpVlmoForPretraining, VlpVlmoImageProcessor, VlpVlmoProcessor
from tests.helpers.tiny_models import NO_DROPOUT, TINY_ALBEF_TEXT, TINY_BLIP_TEXT, TINY_VIT, WIDE_BLIP_TEXT
from tests.helpers.tiny_models import tiny_vilt_config, tiny_vlmo_config
from tests.models.coca.test_pipelines_coca import tiny_coca

pytestmark = pytest.mark.usefixtures("one_thread")

ORIGINALS = Path(__file__).resolve().parents[1] / "fixtures" / "originals"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def run_case(case: str, processor: Any, model: Any) -> dict[str, Any]:
    """Processor and model outputs on a fixed image and text (also run, from its source, where hf_vlp is absent)."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    results: dict[str, Any] = {}
    with torch.no_grad():
        if case == "clip":
            inputs = processor(images=images, text=["a cat", "A Dog on the GRASS!"], padding="longest",
                               return_tensors="pt")
            output = model(**inputs)
            results = {name: output[name] for name in ("logits_per_image", "text_embeds", "image_embeds")}
        elif case == "albef":
            inputs = processor(images=images, text=["A dog, sitting on grass.", "a man riding a red horse"],
                               return_tensors="pt")
            output = model(**inputs, return_loss=True, generator=torch.Generator().manual_seed(0))
            results = {name: output[name] for name in ("loss", "loss_itc", "loss_itm", "loss_mlm")}
        elif case == "blip":
            inputs = processor(images=images, text=["a dog sitting on grass", "a man riding a horse"],
                               add_prompt=True, return_tensors="pt")
            output = model(**inputs, labels=inputs["input_ids"])
            prompt = processor(text=["a picture of "], return_tensors="pt")
            generated = model.generate(inputs["pixel_values"], **prompt, max_length=10)
            results = {"loss": output.loss, "logits": output.logits, "generated": generated,
                       "captions": processor.batch_decode(generated, skip_special_tokens=True)}
        elif case == "vilt":
            inputs = processor(images=images, text=["how many dogs?", "what colour is the horse?"],
                               return_tensors="pt")
            output = model(**inputs, labels=torch.full((2, model.config.num_labels), 0.3))
            results = {"loss": output.loss, "logits": output.logits}
        elif case == "vlmo":  # the pre-training losses (drawn negatives and masking), then re-ranked retrieval
            inputs = processor(images=images, text=["a dog sitting on grass", "a man riding a brown horse"],
                               return_tensors="pt")
            output = model(**inputs, return_loss=True, generator=torch.Generator().manual_seed(0))
            scores = model.rank(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], k=1)
            results = {name: output[name] for name in ("loss", "loss_itc", "loss_itm", "loss_mlm", "mlm_labels")}
            results.update(image_to_text=scores.image_to_text, text_to_image=scores.text_to_image)
        elif case == "coca":  # the joint loss, then open_clip's beam search from start-of-text, decoded
            inputs = processor(images=images, text=["a dog sitting on grass", "a man riding a horse"],
                               return_tensors="pt")
            output = model(**inputs, return_loss=True)
            generated = model.generate(inputs["pixel_values"], max_length=8)
            results = {name: output[name] for name in ("loss", "contrastive_loss", "caption_loss", "logits_per_image")}
            results.update(generated=generated, captions=processor.post_process_image_text_to_text(generated))
    return {**{f"inputs.{name}": value for name, value in inputs.items()}, **results}


CHILD = """
from __future__ import annotations

import sys
import traceback

# hf_vlp is installed here (editable): make it unimportable, as on a machine without it
sys.meta_path[:] = [finder for finder in sys.meta_path if not type(finder).__module__.startswith("__editable__")]
for name in ("hf_vlp", "model_cards", "conversion"):
    sys.modules[name] = None
try:
    import hf_vlp
except ImportError:
    pass
else:
    raise SystemExit("hf_vlp is still importable")

import torch
import transformers
from transformers import AutoConfig, AutoProcessor

torch.set_num_threads(1)
{run_case}

results = {{}}
for key, source, case, auto_class in {jobs!r}:
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
        model = getattr(transformers, auto_class).from_pretrained(source, trust_remote_code=True).eval()
        classes = [type(config), type(processor), type(processor.image_processor), type(model)]
        results[key] = {{"outputs": run_case(case, processor, model), "error": None,
                        "classes": [cls.__module__ + "." + cls.__name__ for cls in classes],
                        "hf_vlp_loaded": [name for name in sys.modules if name.startswith("hf_vlp")
                                          and sys.modules[name] is not None]}}
        if case == "clip":
            model.save_pretrained(sys.argv[2])
    except Exception:
        results[key] = {{"error": traceback.format_exc()}}
torch.save(results, sys.argv[1])
"""


def clip_case() -> tuple[VlpClipModel, VlpClipProcessor]:
    tokenizer = clip_tokenizer_from_bpe(ORIGINALS / "clip_vit" / "bpe_simple_vocab_truncated.txt.gz")
    config = VlpClipConfig(
        projection_dim=16,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id),
    )
    processor = VlpClipProcessor(VlpClipImageProcessor(size=32, crop_size=32), tokenizer, context_length=16)
    return VlpClipModel(config).eval(), processor


def albef_case() -> tuple[VlpAlbefForPretraining, VlpAlbefProcessor]:
    tokenizer = BertTokenizer(vocab=str(ORIGINALS / "albef_pretrain" / "vocab.txt"))
    text = {**TINY_ALBEF_TEXT, **NO_DROPOUT, "vocab_size": len(tokenizer), "cls_token_id": tokenizer.cls_token_id,
            "mask_token_id": tokenizer.mask_token_id}
    config = VlpAlbefConfig(vision_config=TINY_VIT, text_config=text, embed_dim=8, queue_size=16)
    processor = VlpAlbefProcessor(VlpAlbefImageProcessor(size=16), tokenizer, max_length=12)
    return VlpAlbefForPretraining(config).eval(), processor


def blip_case() -> tuple[VlpBlipForConditionalGeneration, VlpBlipProcessor]:
    processor = VlpBlipProcessor(
        VlpBlipImageProcessor(size=16), BertTokenizer(vocab=str(ORIGINALS / "blip_caption" / "vocab.txt")),
        max_length=24,
    )
    text = {**TINY_BLIP_TEXT, **WIDE_BLIP_TEXT, "vocab_size": len(processor.tokenizer),
            **blip_special_token_ids(processor.tokenizer)}
    config = VlpBlipConfig(vision_config={**TINY_VIT, "num_hidden_layers": 1}, text_config=text, embed_dim=8)
    return VlpBlipForConditionalGeneration(config).eval(), processor


def bert_vocabulary(tokenizer: BertTokenizer) -> dict[str, int]:
    """A single-stream config's vocabulary size and special-token ids, from its BERT tokenizer."""
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "cls", "sep", "mask")}
    return {"vocab_size": len(tokenizer), **ids}


def vilt_case() -> tuple[VlpViltForQuestionAnswering, VlpViltProcessor]:
    tokenizer = BertTokenizer(vocab=str(ORIGINALS / "albef_pretrain" / "vocab.txt"))
    config = tiny_vilt_config(**bert_vocabulary(tokenizer), id2label={0: "one", 1: "two", 2: "brown", 3: "white"})
    image_processor = VlpViltImageProcessor(size={"shortest_edge": 16, "longest_edge": 26}, size_divisor=8)
    processor = VlpViltProcessor(image_processor, tokenizer, max_length=config.max_position_embeddings)
    return VlpViltForQuestionAnswering(config).eval(), processor


def vlmo_case() -> tuple[VlpVlmoForPretraining, VlpVlmoProcessor]:
    tokenizer = BertTokenizer(vocab=str(ORIGINALS / "albef_pretrain" / "vocab.txt"))
    config = tiny_vlmo_config(**bert_vocabulary(tokenizer), mlm_probability=0.5)
    processor = VlpVlmoProcessor(VlpVlmoImageProcessor(size=config.image_size), tokenizer,
                                 max_length=config.max_text_length)
    return VlpVlmoForPretraining(config).eval(), processor


def coca_case() -> tuple[VlpCocaForConditionalGeneration, VlpCocaProcessor]:
    return tiny_coca(VlpCocaForConditionalGeneration)


# case -> (builder, the Auto class that loads its head, the hf_vlp classes it is compared with)
CASES = {
    "clip": (clip_case, "AutoModelForZeroShotImageClassification", VlpClipModel, VlpClipProcessor),
    "albef": (albef_case, "AutoModelForPreTraining", VlpAlbefForPretraining, VlpAlbefProcessor),
    "blip": (blip_case, "AutoModelForImageTextToText", VlpBlipForConditionalGeneration, VlpBlipProcessor),
    "vilt": (vilt_case, "AutoModelForVisualQuestionAnswering", VlpViltForQuestionAnswering, VlpViltProcessor),
    "vlmo": (vlmo_case, "AutoModelForPreTraining", VlpVlmoForPretraining, VlpVlmoProcessor),
    "coca": (coca_case, "AutoModelForImageTextToText", VlpCocaForConditionalGeneration, VlpCocaProcessor),
}


def save_case(case: str, folder: Path) -> None:
    """Save a tiny model and its processor; CLIP exports through ``save_pretrained(remote_code=True)``."""
    torch.manual_seed(0)
    model, processor = CASES[case][0]()
    processor.save_pretrained(folder)
    if case == "clip":
        model.save_pretrained(folder, remote_code=True)
    else:
        model.save_pretrained(folder)
        export_remote_code(folder)


def hub_snapshot(folder: Path, hf_home: Path, repo_id: str) -> None:
    """Copy ``folder`` into an offline hub cache as ``repo_id`` at :data:`COMMIT`."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote_code")
    for case in CASES:
        save_case(case, root / case)
    return root


@pytest.fixture(scope="module")
def remote_results(exported: Path) -> dict[str, dict[str, Any]]:
    """Everything loaded once, in one process without hf_vlp: each case from its folder and from the hub cache."""
    hf_home = exported / "hf_home"
    jobs = []
    for case, (_, auto_class, _, _) in CASES.items():
        hub_snapshot(exported / case, hf_home, f"hf-vlp-test/tiny-{case}")
        jobs += [(f"{case}/local", str(exported / case), case, auto_class),
                 (f"{case}/hub", f"hf-vlp-test/tiny-{case}", case, auto_class)]
    script = exported / "child.py"
    script.write_text(CHILD.format(run_case=textwrap.dedent(inspect.getsource(run_case)), jobs=jobs))
    env = {name: value for name, value in os.environ.items() if not name.startswith(("HF_", "PYTHON"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    outside = exported / "elsewhere"
    outside.mkdir()
    completed = subprocess.run(
        [sys.executable, "-I", str(script), str(exported / "results.pt"), str(exported / "resaved")],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return torch.load(exported / "results.pt", weights_only=True)


def local_outputs(case: str, folder: Path) -> dict[str, Any]:
    """:func:`run_case` with hf_vlp's own classes."""
    _, _, model_class, processor_class = CASES[case]
    return run_case(case, processor_class.from_pretrained(folder), model_class.from_pretrained(folder).eval())


def assert_same(remote: dict[str, Any], local: dict[str, Any]) -> None:
    assert remote.keys() == local.keys()
    for name, expected in local.items():
        got = remote[name]
        if isinstance(expected, torch.Tensor) and expected.is_floating_point():
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
        elif isinstance(expected, torch.Tensor):
            assert torch.equal(got, expected), name
        else:
            assert got == expected, name


# --------------------------------------------------------------------------------------------- without hf_vlp


@pytest.mark.parametrize("source", ["local", "hub"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_remote_code_reproduces_hf_vlp_without_hf_vlp(exported, remote_results, case, source) -> None:
    result = remote_results[f"{case}/{source}"]
    assert result["error"] is None, result["error"]
    assert result["hf_vlp_loaded"] == []
    assert all(name.startswith("transformers_modules.") for name in result["classes"]), result["classes"]
    # one copy of the shared code: the config, processor and model classes come from the same cached module folder
    assert len({name.rsplit(".", 2)[0] for name in result["classes"]}) == 1, result["classes"]
    assert_same(result["outputs"], local_outputs(case, exported / case))


def test_a_model_loaded_as_remote_code_saves_with_its_code(exported, remote_results) -> None:
    resaved = exported / "resaved"
    assert not (resaved / "README.md").exists()  # cards are hf_vlp's: its templates are not part of the code
    auto_map = json.loads((resaved / "config.json").read_text())["auto_map"]
    for reference in (auto_map["AutoConfig"], auto_map["AutoModelForZeroShotImageClassification"]):
        assert (resaved / f"{reference.split('.')[0]}.py").is_file()
    resaved_state = VlpClipModel.from_pretrained(resaved).state_dict()
    for name, tensor in VlpClipModel.from_pretrained(exported / "clip").state_dict().items():
        assert torch.equal(resaved_state[name], tensor), name


# ------------------------------------------------------------------------------------------------ with hf_vlp


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_with_hf_vlp_imported_the_auto_classes_keep_hf_vlp_classes(exported, trust_remote_code) -> None:
    folder = exported / "blip"
    options = {"trust_remote_code": trust_remote_code}
    assert type(AutoConfig.from_pretrained(folder, **options)) is VlpBlipConfig
    assert type(transformers.AutoModelForImageTextToText.from_pretrained(folder, **options)) is (
        VlpBlipForConditionalGeneration)
    processor = AutoProcessor.from_pretrained(folder, **options)
    assert type(processor) is VlpBlipProcessor and type(processor.image_processor) is VlpBlipImageProcessor
    assert type(AutoImageProcessor.from_pretrained(folder, **options)) is VlpBlipImageProcessor


# --------------------------------------------------------------------------------------------------- contents


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_is_flat_self_contained_and_mirrors_the_registrations(exported, case) -> None:
    folder = exported / case
    modules = {path.stem: path for path in folder.glob("*.py")}
    third_party = set()
    for name, path in modules.items():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("hf_vlp"), f"{name}: from {node.module} import"
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert node.level == 1 and node.module in modules, f"{name}: from {'.' * node.level}{node.module}"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("hf_vlp") for alias in node.names), name
        # what transformers copies and requires: every relative import is a file here, every package is allowed
        assert set(get_relative_imports(path)) <= modules.keys(), name
        third_party |= set(get_imports(path)) - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= REMOTE_DEPENDENCIES and {"accelerate", "matplotlib"}.isdisjoint(third_party)
    tooling = ("hf_vlp_training", "hf_vlp_evaluation", "hf_vlp_workflows", "hf_vlp_cli", "hf_vlp_models_albef_gradcam",
               "hf_vlp_integrations_model_card", "hf_vlp_integrations_pipelines")
    assert not [name for name in modules if name.startswith(tooling)]

    config = json.loads((folder / "config.json").read_text())
    _, config_class = find_registration(config["model_type"])
    for auto_name, reference in config["auto_map"].items():
        module, class_name = reference.split(".")
        assert module == ENTRY_MODULE
        if auto_name != "AutoConfig":  # the class hf_vlp registers for this Auto class
            assert getattr(transformers, auto_name)._model_mapping[config_class].__name__ == class_name
    registered = {auto for auto in dir(transformers) if auto.startswith("AutoModel")
                  and config_class in getattr(getattr(transformers, auto), "_model_mapping", {})}
    assert set(config["auto_map"]) == {"AutoConfig", *registered}
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": f"{ENTRY_MODULE}.{processor_config['processor_class']}"}
    image_config = processor_config["image_processor"]
    assert image_config["auto_map"] == {"AutoImageProcessor": f"{ENTRY_MODULE}.{image_config['image_processor_type']}"}


def test_export_is_deterministic_and_replaces_its_own_stale_modules(exported, tmp_path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(exported / "clip", folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    (folder / "hf_vlp_models_gone.py").write_text(remote_code.HEADER_PREFIX + " 0.0.1 (old)\n")
    (folder / "handler.py").write_text("# the user's own file\n")
    written = export_remote_code(folder)
    assert written == sorted(str(folder / name) for name in before if name.endswith(".py") or name in (
        "config.json", "processor_config.json"))
    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert after == {**before, "handler.py": b"# the user's own file\n"}


def test_tower_models_and_unregistered_heads_are_exported_too(exported, tmp_path) -> None:
    tower = tmp_path / "vision"
    VlpClipModel.from_pretrained(exported / "clip").vision_model.save_pretrained(tower, remote_code=True)
    assert json.loads((tower / "config.json").read_text())["auto_map"] == {
        "AutoConfig": f"{ENTRY_MODULE}.VlpClipVisionConfig", "AutoModel": f"{ENTRY_MODULE}.VlpClipVisionModel"}
    retrieval = tmp_path / "retrieval"  # no Auto class maps it: get_class_from_dynamic_module("hf_vlp_classes.X", ...)
    shutil.copytree(exported / "albef", retrieval)
    config = json.loads((retrieval / "config.json").read_text())
    (retrieval / "config.json").write_text(json.dumps({**config, "architectures": ["VlpAlbefForImageTextRetrieval"]}))
    export_remote_code(retrieval)
    assert "import VlpAlbefForImageTextRetrieval\n" in (retrieval / f"{ENTRY_MODULE}.py").read_text()


def test_each_sub_config_maps_its_own_model_and_a_modelless_one_only_auto_config() -> None:
    arch, config_class = find_registration("hf_vlp_coca_vision")
    assert model_auto_map(arch, config_class) == {"AutoConfig": VlpCocaVisionConfig, "AutoModel": VlpCocaVisionModel}
    arch, config_class = find_registration("hf_vlp_coca_decoder")  # CoCa's multimodal decoder has no model class
    assert model_auto_map(arch, config_class) == {"AutoConfig": VlpCocaDecoderConfig}


def test_not_main_process_saves_without_exporting(exported, tmp_path) -> None:
    VlpClipModel.from_pretrained(exported / "clip").save_pretrained(tmp_path, remote_code=True, is_main_process=False)
    assert not list(tmp_path.glob("*.py"))


@pytest.mark.parametrize(("root", "package"), [
    (("hf_vlp.integrations.compat", "enable_fsdp_on_cpu"), "accelerate"),
    (("hf_vlp.models.albef", "render_gradcam"), "matplotlib"),
])
def test_code_that_needs_packages_a_remote_machine_may_lack_is_refused(root, package) -> None:
    """The models leave these out only because pruning drops the training and plotting code that imports them."""
    with pytest.raises(BundleError, match=f"'{package}': \\['{root[0]}"):
        bundle_sources([root])


def test_undefined_names_finds_what_pruning_would_break() -> None:
    source = "import os\nX = 1\nclass A(Base):\n    def f(self):\n        return os.sep + X + helper()\n"
    assert undefined_names(source) == ["Base", "helper"]


# ----------------------------------------------------------------------------------------------------- errors


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (``None``) under ``directory``: a leftover staging folder shows."""
    return {str(path.relative_to(directory)): path.read_bytes() if path.is_file() else None
            for path in directory.rglob("*")}


def test_a_folder_that_is_not_an_hf_vlp_model_is_refused_untouched(exported, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json: save the model there first"):
        export_remote_code(empty)
    bert = tmp_path / "bert"
    bert_config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertModel(bert_config).save_pretrained(bert)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="model_type 'bert', not an hf_vlp model"):
        export_remote_code(bert)
    (bert / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read .*config.json"):
        export_remote_code(bert)
    assert snapshot(tmp_path) == {**before, "bert/config.json": b"{not json"}
    clip = tmp_path / "clip"
    shutil.copytree(exported / "clip", clip)
    config = json.loads((clip / "config.json").read_text())
    (clip / "config.json").write_text(json.dumps({**config, "architectures": ["VlpClipForTelepathy"]}))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="architecture 'VlpClipForTelepathy', which hf_vlp.models.clip does not"):
        export_remote_code(clip)
    assert snapshot(tmp_path) == before


def test_a_failed_export_leaves_the_folder_as_it_was(exported, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "albef"
    shutil.copytree(exported / "albef", folder)
    for path in folder.glob("*.py"):  # an older export, which the new one replaces
        path.write_text(path.read_text() + "# older\n")
    (folder / "hf_vlp_models_gone.py").write_text(remote_code.HEADER_PREFIX + " 0.0.1 (old)\n")  # and deletes
    before = snapshot(tmp_path)
    replace, failures = os.replace, []

    def fail_on_the_config(source: Any, destination: Any) -> None:  # the last file moved in, once
        if Path(destination) == folder / "processor_config.json" and not failures:
            failures.append(destination)
            raise OSError("disk full")
        replace(source, destination)

    monkeypatch.setattr(remote_code.os, "replace", fail_on_the_config)
    with pytest.raises(OSError, match="disk full"):
        export_remote_code(folder)
    assert snapshot(tmp_path) == before


def test_saving_a_model_loaded_from_an_exported_folder_without_the_code_drops_its_auto_map(exported, tmp_path):
    """The loaded config carries the exported folder's auto_map; a plain save holds no code, so the entries that
    point at it go (they would fail without hf_vlp with "hf_vlp_classes.py not found"); an export keeps them."""
    model = transformers.AutoModel.from_pretrained(exported / "clip")
    assert isinstance(model, VlpClipModel) and model.config.auto_map
    model.save_pretrained(tmp_path / "plain")
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    assert not (tmp_path / "plain" / f"{ENTRY_MODULE}.py").exists()
    assert remote_code.drop_stale_auto_map(tmp_path / "plain") is False  # nothing left to drop
    model.save_pretrained(tmp_path / "exported", remote_code=True)
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        f"{ENTRY_MODULE}.VlpClipModel"
    )
