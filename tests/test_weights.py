"""GPTModel loaded from a hub checkpoint is the same model as Hugging Face's GPT-2."""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import torch

from correcteur.errors import UserError
from correcteur.generate import generate
from correcteur.model import GPTModel
from correcteur.weights import (
    config_from_settings,
    gpt2_from_directory,
    load_base_model,
    load_hf_directory,
    load_weights_into_gpt,
)

PROMPT = "Les enfants sont allés à l'école ce matin."


@pytest.fixture(scope="module")
def hf_model(hf_gpt2_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()


def assert_same_model(ours: GPTModel, hf_model, tokenizer) -> float:
    """Same logits on a batch of text and random ids, same 20 greedy tokens; returns the max diff."""
    torch.manual_seed(1)
    text = torch.tensor((tokenizer.encode(PROMPT) * 4)[:40])
    batch = torch.stack([text, torch.randint(0, 50257, (40,))])
    with torch.no_grad():
        diff = (ours.eval()(batch) - hf_model(batch).logits).abs().max().item()
    assert diff < 1e-4

    prompt = torch.tensor([tokenizer.encode(PROMPT)])
    expected = hf_model.generate(prompt, max_new_tokens=20, do_sample=False,
                                 eos_token_id=None, pad_token_id=tokenizer.eot_token)
    assert generate(ours, prompt, max_new_tokens=20, context_size=128).tolist() == expected.tolist()
    return diff


def assert_same_weights(a: GPTModel, b: GPTModel) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_gpt2_from_directory_is_hugging_face_gpt2(hf_gpt2_dir, hf_model, tokenizer):
    ours = gpt2_from_directory(hf_gpt2_dir)
    diff = assert_same_model(ours, hf_model, tokenizer)
    print(f"max abs logit difference: {diff:.2e}")
    assert ours.out_head.weight is ours.tok_emb.weight


def test_course_route_settings_params_load(hf_gpt2_dir):
    settings, params = load_hf_directory(hf_gpt2_dir)
    assert settings == {"n_vocab": 50257, "n_ctx": 128, "n_embd": 64, "n_head": 4, "n_layer": 2}
    assert params["blocks"][1]["attn"]["c_attn"]["w"].shape == (64, 192)  # Conv1D: (in, 3 * out)
    gpt = GPTModel(config_from_settings(settings))
    load_weights_into_gpt(gpt, params)
    assert_same_weights(gpt, gpt2_from_directory(hf_gpt2_dir))


def test_hub_key_names_and_mask_buffers_are_read(hf_gpt2_dir, tmp_path):
    """The hub's own files name tensors without `transformer.` and carry causal-mask buffers."""
    state = safetensors.torch.load_file(hf_gpt2_dir / "model.safetensors")
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state |= {f"h.{i}.attn.bias": torch.ones(1, 1, 128, 128).tril() for i in range(2)}
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    shutil.copy(hf_gpt2_dir / "config.json", tmp_path)
    assert_same_weights(gpt2_from_directory(tmp_path), gpt2_from_directory(hf_gpt2_dir))


def test_mismatched_checkpoint_names_keys_and_shapes(hf_gpt2_dir):
    settings, params = load_hf_directory(hf_gpt2_dir)
    params["lm_head.extra"] = params["wte"]
    cfg = {**config_from_settings(settings), "n_layers": 3, "context_length": 256}
    gpt = GPTModel(cfg)
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    with pytest.raises(UserError) as error:
        load_weights_into_gpt(gpt, params)
    message = str(error.value)
    assert "missing: blocks.2.attn.c_attn.w" in message
    assert "unexpected: lm_head.extra" in message
    assert "wpe: checkpoint (128, 64), model (256, 64)" in message
    assert "context_length=128, emb_dim=64, n_layers=2" in message  # the config that would fit
    assert all(torch.equal(v, gpt.state_dict()[k]) for k, v in before.items())  # nothing copied


def test_unsupported_config_and_missing_files_are_explained(hf_gpt2_dir, tmp_path):
    config = json.loads((hf_gpt2_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"activation_function": "relu"}))
    with pytest.raises(UserError, match="lacks model.safetensors"):
        load_hf_directory(tmp_path)
    shutil.copy(hf_gpt2_dir / "model.safetensors", tmp_path)
    with pytest.raises(UserError, match="activation_function='relu'"):
        load_hf_directory(tmp_path)


def test_base_model_from_placed_files_needs_no_network(hf_gpt2_dir, tmp_path):
    shutil.copytree(hf_gpt2_dir, tmp_path / "124M")
    model, model_tokenizer, info = load_base_model("gpt2", models_dir=tmp_path)
    assert info["pretrained"] and info["name"] == "gpt2-small"
    assert model_tokenizer.n_vocab == 50257
    assert_same_weights(model, gpt2_from_directory(hf_gpt2_dir))


def test_scratch_model_only_on_request():
    with pytest.raises(UserError, match="no pretrained weights"):
        load_base_model("gpt2-cpu")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model, _, info = load_base_model("gpt2-cpu", allow_scratch=True, seed=5)
    assert info["pretrained"] is False
    assert (model.cfg["n_layers"], model.cfg["emb_dim"], model.context_length) == (6, 384, 256)
    with pytest.warns(UserWarning):
        again, _, _ = load_base_model("gpt2-cpu", allow_scratch=True, seed=5)
    assert torch.equal(model.trf_blocks[3].att.W_key.weight, again.trf_blocks[3].att.W_key.weight)
