"""`--model` as a local Hugging Face directory or a hub name: loading, training, reloading."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from fake_ollama import unused_url
from test_download import FakeHub
from test_llama import FRENCH, tiny_hf
from test_train import PAIRS, single_thread, tiny_config, write_data  # noqa: F401 - autouse fixture
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from correcteur import fetch, weights
from correcteur.checkpoint import load_for_inference
from correcteur.cli import main
from correcteur.errors import UserError
from correcteur.llama import LlamaModel
from correcteur.model import GPTModel
from correcteur.tokenizer import get_tokenizer
from correcteur.train import train

transformers = pytest.importorskip("transformers")
TEXTS = [*FRENCH, *(text for pair in PAIRS for text in pair)]


def save_tiny_directory(kind: str, path: Path) -> Path:
    """A random tiny `transformers` model of `kind` and a byte-level BPE trained here (SmolLM2's
    pre-tokenizer, 300 tokens like the model), saved as a hub directory; end token <|im_end|>."""
    model = tiny_hf(kind)
    model.config.eos_token_id = 2
    model.save_pretrained(path)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(TEXTS * 3, trainer)
    bpe.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_directory("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return save_tiny_directory("qwen2", tmp_path_factory.mktemp("tiny-qwen"))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


IDS = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("directory", ["llama_dir", "qwen_dir"])
def test_directory_loads_as_transformers_model_with_its_tokenizer(directory, request):
    path = request.getfixturevalue(directory)
    model, tokenizer, info = weights.load_base_model(str(path))
    assert isinstance(model, LlamaModel)
    reference = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    assert (logits(model, IDS) - logits(reference, IDS)).abs().max().item() < 1e-4

    bpe = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert all(tokenizer.encode(text) == bpe.encode(text).ids for text in TEXTS)
    assert tokenizer.eot_token == 2
    assert tokenizer.name == info["path"] == str(path.resolve())
    assert (info["name"], info["sha256"]) == (path.name, fetch.sha256_of(path / "model.safetensors"))
    assert (info["family"], info["pretrained"]) == ("llama", True)


def test_model_type_alone_names_the_architecture(qwen_dir, tmp_path):
    shutil.copytree(qwen_dir, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _, info = weights.load_base_model(str(tmp_path))
    assert info["architecture"] == "Qwen2ForCausalLM" and model.cfg["qkv_bias"]


def test_training_on_a_directory_reloads_for_inference(llama_dir, tmp_path):
    path = shutil.copytree(llama_dir, tmp_path / "my-llama")
    write_data(tmp_path / "data", PAIRS[:6], PAIRS[6:])
    result = train(tiny_config(tmp_path, model=str(path), max_steps=2))
    assert result.run_dir == tmp_path / "runs" / "my-llama"

    model, tokenizer, meta = load_for_inference(result.run_dir)
    assert meta["model_name"] == "my-llama" and meta["base"]["sha256"] == fetch.sha256_of(path / "model.safetensors")
    assert torch.equal(logits(model, IDS), logits(result.model.cpu().eval(), IDS))
    original = get_tokenizer(str(path))
    assert all(tokenizer.encode(text) == original.encode(text) for text in TEXTS)
    assert tokenizer.eot_token == original.eot_token

    # The run folder holds its tokenizer: the base may move away. An older folder, without
    # tokenizer/, still reads it from the base's directory, and says so once it is gone.
    path.rename(tmp_path / "moved")
    moved, tokenizer, _ = load_for_inference(result.run_dir)
    assert all(tokenizer.encode(text) == original.encode(text) for text in TEXTS)
    shutil.rmtree(result.run_dir / "tokenizer")
    with pytest.raises(UserError, match=f"read from the directory {path.resolve()}, which no longer exists"):
        load_for_inference(result.run_dir)


def test_gpt2_directory_loads_with_gpt2_tokenizer(hf_gpt2_dir, tmp_path):
    model, tokenizer, info = weights.load_base_model(str(hf_gpt2_dir))
    assert isinstance(model, GPTModel) and tokenizer.name == "gpt2"
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    ids = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    assert (logits(model, ids) - logits(reference, ids)).abs().max().item() < 1e-4
    assert (info["family"], info["architecture"]) == ("gpt2", "GPT2LMHeadModel")

    config = json.loads((hf_gpt2_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"vocab_size": 32000}))
    (tmp_path / "model.safetensors").touch()
    with pytest.raises(UserError, match="GPT-2 with 32000 tokens"):
        weights.load_base_model(str(tmp_path))


def broken_copy(source: Path, target: Path, drop: str = "", config: dict | None = None) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(drop) if drop else None)
    if config is not None:
        (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("problem, message", [
    ("absent", "does not exist: --model takes"),
    ("no config", "has no config.json"),
    ("no tokenizer", "lacks tokenizer.json, which a LlamaForCausalLM directory needs"),
    ("no weights", r"lacks \*.safetensors, which a LlamaForCausalLM directory needs"),
    ("bert", "describes a BertForMaskedLM, which correcteur cannot load"),
    ("bad json", "is not valid JSON"),
    ("a file", "is a file, not a model directory"),
])
def test_unusable_directories_are_explained(llama_dir, tmp_path, problem, message):
    target = tmp_path / "model"
    if problem == "no config":
        broken_copy(llama_dir, target, drop="config.json")
    elif problem == "no tokenizer":
        broken_copy(llama_dir, target, drop="tokenizer.json")
    elif problem == "no weights":
        broken_copy(llama_dir, target, drop="*.safetensors")
    elif problem == "bert":
        broken_copy(llama_dir, target, config={"architectures": ["BertForMaskedLM"]})
    elif problem == "bad json":
        broken_copy(llama_dir, target)
        (target / "config.json").write_text("{not json")
    elif problem == "a file":
        target.write_text("weights?")
    with pytest.raises(UserError, match=message):
        weights.load_base_model(str(target))


def test_unknown_names_list_what_is_accepted(capsys):
    with pytest.raises(UserError, match=r"qwen2.5-0.5b \(Qwen/Qwen2.5-0.5B-Instruct\)"):
        weights.load_base_model("qwen")
    assert main(["download", "--model", "qwen"]) == 2
    assert "other models: smollm2-135m, smollm2-135m-hf" in capsys.readouterr().err


@pytest.fixture
def hub(qwen_dir):
    server = FakeHub({name: (qwen_dir / name).read_bytes() for name in weights.HF_HUB_FILES})
    threading.Thread(target=server.server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_hub_name_downloads_then_loads_offline(hub, qwen_dir, tmp_path):
    assert main(["download", "--model", "qwen2.5-0.5b", "--models-dir", str(tmp_path),
                 "--endpoint", hub.url]) == 0
    assert "/Qwen/Qwen2.5-0.5B-Instruct/resolve/main/model.safetensors" in [p for p, _ in hub.requests]
    target = tmp_path / "qwen2.5-0.5b"
    assert sorted(p.name for p in target.iterdir()) == sorted(weights.HF_HUB_FILES)

    count = len(hub.requests)
    model, tokenizer, info = weights.load_base_model("qwen2.5-0.5b", models_dir=tmp_path)
    assert len(hub.requests) == count  # complete files are not fetched again
    assert (info["name"], info["hub_repository"]) == ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct")
    assert tokenizer.name == str(target.resolve())
    reference = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir).eval()
    assert (logits(model, IDS) - logits(reference, IDS)).abs().max().item() < 1e-4


def test_unreachable_hub_says_how_to_fetch_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.ENDPOINT_ENV, unused_url())
    with pytest.raises(UserError) as error:
        weights.load_base_model("smollm2-360m", models_dir=tmp_path)
    message = str(error.value)
    assert "cannot connect to 127.0.0.1" in message and "\n" not in message
    assert "https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct" in message
    for name in weights.HF_HUB_FILES:
        assert str(tmp_path / "smollm2-360m" / name) in message


def test_a_relative_model_directory_is_stored_absolute(tmp_path, monkeypatch):
    """adapters.pt and evaluation rebuild the base from config.model, from any working directory."""
    from correcteur.train import TrainConfig

    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(model="my-model", lora_rank=4)
    assert config.model == str(tmp_path / "my-model")
    assert config.run_dir.name == "my-model-lora4"
    assert TrainConfig(model="gpt2-medium").model == "gpt2-medium"  # names stay names
    for name in ("smollm2-135m", "gpt2-medium", "qwen2.5-0.5b"):  # even beside a folder of that name
        (tmp_path / name).mkdir()
        assert TrainConfig(model=name).model == name
