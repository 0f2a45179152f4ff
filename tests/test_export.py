"""Export: a Hugging Face directory that transformers loads alone, a GGUF file that llama.cpp's
reader and our own loader read back, an Ollama Modelfile, a model card; same logits as ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import torch
from test_hf_models import save_tiny_directory
from test_llama import (
    FRENCH,
    HELD_OUT,
    REAL_GGUF,
    random_french_strings,
    tiny_hf,
    trained_smollm_style_bpe,
    write_gguf,
)
from test_train import PAIRS, single_thread, tiny_config, write_data  # noqa: F401 - autouse fixture

from correcteur import weights
from correcteur.checkpoint import inference_state, load_for_inference, save_checkpoint
from correcteur.cli import main
from correcteur.errors import UserError
from correcteur.export import export, export_gguf, export_hf, modelfile
from correcteur.generate import generate
from correcteur.guard import GuardConfig, save_guard_config
from correcteur.prompt import correction_prompt
from correcteur.tokenizer import LlamaTokenizer
from correcteur.train import train

transformers = pytest.importorskip("transformers")
TEXTS = [*FRENCH, HELD_OUT, "a  1", "x 12.5 ", "  ", *random_french_strings(100, seed=9)]


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def assert_same_tokenizer(directory: Path, ours) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    for text in TEXTS:
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids) == ours.decode(ids)
    assert theirs.eos_token_id == ours.eot_token


def lora_run(tmp_path: Path, **overrides) -> Path:
    """A run trained a few LoRA steps at a high rate, so the merged weights differ from the base."""
    write_data(tmp_path / "data", PAIRS[:6], PAIRS[6:])
    config = tiny_config(tmp_path, lora_rank=4, lora_alpha=8, max_steps=3, eval_freq=3, lr=3e-2, **overrides)
    return train(config).run_dir


# ----------------------------------------------------------------------------- Hugging Face


def test_gpt2_run_exports_to_a_transformers_gpt2(tmp_path, hf_gpt2_dir, capsys):
    base = shutil.copytree(hf_gpt2_dir, tmp_path / "tiny-gpt2")
    run = lora_run(tmp_path, model=str(base))
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert "from_pretrained" in capsys.readouterr().out

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["tie_word_embeddings"]
    assert isinstance(transformers.AutoModelForCausalLM.from_pretrained(out), transformers.GPT2LMHeadModel)
    assert {"vocab.json", "merges.txt", "tokenizer.json", "generation_config.json", "README.md"} <= {
        p.name for p in out.iterdir()}

    model, tokenizer, _ = load_for_inference(run)
    ids = torch.tensor([tokenizer.encode(text)[:20] for text in FRENCH[:2]])
    assert (hf_logits(out, ids) - our_logits(model, ids)).abs().max().item() < 1e-4
    assert (hf_logits(hf_gpt2_dir, ids) - our_logits(model, ids)).abs().max().item() > 1e-2  # LoRA merged
    assert_same_tokenizer(out, tokenizer)
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["do_sample"], generation["eos_token_id"]) == (False, 50256)


@pytest.mark.parametrize(("kind", "architecture"), [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_llama_family_run_exports_to_its_transformers_class(tmp_path, kind, architecture):
    base = save_tiny_directory(kind, tmp_path / f"tiny-{kind}")
    run = lora_run(tmp_path, model=str(base))
    out = tmp_path / "hf"
    export(run, out, "hf")

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture]
    reference = json.loads((base / "config.json").read_text())
    for key in ("rms_norm_eps", "num_key_value_heads", "tie_word_embeddings", "max_position_embeddings"):
        assert config[key] == reference[key], key
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded).__name__ == architecture
    assert loaded.config.rope_parameters["rope_theta"] == 5000.0
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == (kind == "llama")

    model, tokenizer, _ = load_for_inference(run)
    ids = torch.randint(0, 300, (2, 30), generator=torch.Generator().manual_seed(3))
    assert (hf_logits(out, ids) - our_logits(model, ids)).abs().max().item() < 1e-4
    assert (hf_logits(base, ids) - our_logits(model, ids)).abs().max().item() > 1e-2  # LoRA merged
    assert_same_tokenizer(out, tokenizer)


@pytest.fixture(scope="module")
def gguf_base(tmp_path_factory):
    """A tiny Llama with a 300-token SmolLM2-style tokenizer, in a GGUF file as llama.cpp writes
    SmolLM2's: the route of the CPU base model, whose tokenizer has no tokenizer.json."""
    _, tokens, merges = trained_smollm_style_bpe(300)
    path = tmp_path_factory.mktemp("gguf-base") / "tiny.gguf"
    write_gguf(path, tiny_hf("llama"), "llama", {"tokens": tokens, "merges": merges,
                                                 "types": [3, 3, 3] + [1] * (len(tokens) - 3)})
    return path


def tiny_meta(model, tokenizer) -> dict:
    return {"model_cfg": model.cfg, "family": model.family, "model_name": "tiny-smollm", "tokenizer": tokenizer.name,
            "prompt_style": "short", "input_prefix": "", "base": {"name": "tiny-smollm", "pretrained": True}}


def test_a_gguf_tokenizer_becomes_a_tokenizer_json_that_transformers_reads(tmp_path, gguf_base):
    model, tokenizer = weights.llama_from_gguf(gguf_base), LlamaTokenizer.from_gguf(gguf_base)
    export_hf(model, tokenizer, tiny_meta(model, tokenizer), tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    assert_same_tokenizer(tmp_path, tokenizer)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(4))
    assert (hf_logits(tmp_path, ids) - our_logits(model, ids)).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------- GGUF and Ollama


@pytest.mark.parametrize(("gguf_type", "tolerance"), [("f16", 2e-3), ("q8_0", 2e-2)])
def test_gguf_export_reads_back_with_gguf_and_with_our_loader(tmp_path, gguf_base, gguf_type, tolerance):
    model, tokenizer = weights.llama_from_gguf(gguf_base), LlamaTokenizer.from_gguf(gguf_base)
    path, modelfile_path = export_gguf(model, tokenizer, tiny_meta(model, tokenizer), tmp_path, gguf_type)
    assert path.name == f"model-{gguf_type}.gguf" and not list(tmp_path.glob("*.part"))

    reader = gguf.GGUFReader(path)
    field = {key: reader.fields[key].contents() for key in reader.fields if not key.startswith("GGUF.")}
    cfg = model.cfg
    assert field["general.architecture"] == "llama"
    assert (field["llama.block_count"], field["llama.embedding_length"], field["llama.feed_forward_length"],
            field["llama.attention.head_count"], field["llama.attention.head_count_kv"], field["llama.context_length"]
            ) == (cfg["n_layers"], cfg["emb_dim"], cfg["hidden_dim"], cfg["n_heads"], cfg["n_kv_groups"], cfg["context_length"])
    assert field["llama.rope.freq_base"] == pytest.approx(cfg["rope_base"])
    assert field["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert field["general.file_type"] == (7 if gguf_type == "q8_0" else 1)
    assert (field["tokenizer.ggml.model"], field["tokenizer.ggml.pre"]) == ("gpt2", "smollm")
    assert field["tokenizer.ggml.eos_token_id"] == 2 and field["tokenizer.ggml.add_bos_token"] is False
    original = gguf.GGUFReader(gguf_base)
    assert field["tokenizer.ggml.tokens"] == original.fields["tokenizer.ggml.tokens"].contents()
    assert field["tokenizer.ggml.merges"] == original.fields["tokenizer.ggml.merges"].contents()
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types  # tied head
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == gguf_type.upper()

    again = weights.llama_from_gguf(path)
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(5))
    ours = our_logits(model, ids)
    assert (our_logits(again, ids) - ours).abs().max().item() < tolerance * ours.abs().max().item()
    reread = LlamaTokenizer.from_gguf(path)
    assert all(reread.encode(text) == tokenizer.encode(text) for text in TEXTS)

    text = modelfile_path.read_text()
    assert text.splitlines()[2:5] == [f"FROM ./{path.name}", 'TEMPLATE """Corrigez le texte suivant.',
                                      '{{ .Prompt }}']
    prompt = correction_prompt("{{ .Prompt }}", "short")
    assert f'TEMPLATE """{prompt}"""' in text
    assert "PARAMETER temperature 0" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'PARAMETER stop "=>"' in text and "PARAMETER num_ctx 128" in text


def test_modelfile_of_the_alpaca_prompt_stops_at_its_headers(gguf_base):
    tokenizer = LlamaTokenizer.from_gguf(gguf_base)
    text = modelfile("m.gguf", tokenizer, {"prompt_style": "alpaca", "input_prefix": "grammaire: "}, 512)
    assert "### Input:\ngrammaire: {{ .Prompt }}\n\n### Response:\n\"\"\"" in text
    assert 'PARAMETER stop "###"' in text and 'PARAMETER stop "=>"' not in text


def test_gguf_gives_the_same_greedy_answers_in_llama_cpp(tmp_path, gguf_base):
    llama_cpp = pytest.importorskip("llama_cpp")  # not on PyPI as a wheel: built from source when wanted
    model, tokenizer = weights.llama_from_gguf(gguf_base), LlamaTokenizer.from_gguf(gguf_base)
    path, _ = export_gguf(model, tokenizer, tiny_meta(model, tokenizer), tmp_path, "f16")
    served = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False)
    for sentence in ["Il a manger une pomme.", "Les enfant joue dehors.", "Ces une bonne idée."]:
        prompt = tokenizer.encode(correction_prompt(sentence, "short"))
        ours = generate(model, torch.tensor([prompt]), 12, 128, eos_id=tokenizer.eot_token)[0, len(prompt):].tolist()
        theirs = served.generate(prompt, temp=0.0, top_k=1)
        answer = [token for token, _ in zip(theirs, range(len(ours)), strict=False)]
        assert answer == ours[:len(answer)]


# ----------------------------------------------------------------------------- the model card, failures


def test_model_card_names_base_prompt_guard_metrics_and_licences(tmp_path, hf_gpt2_dir):
    run = lora_run(tmp_path, model=str(shutil.copytree(hf_gpt2_dir, tmp_path / "tiny-gpt2")))
    save_guard_config(GuardConfig(min_margin=5.0, max_stretch_edits=1), run)
    scores = {"n": 40, "error_reduction": 0.349, "harm_rate": 0.005, "clean_preserved": 1.0, "exact_match": 0.385}
    copy = {"n": 40, "error_reduction": 0.0, "harm_rate": 0.0, "clean_preserved": 1.0, "exact_match": 0.145}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"n": 40, "guard": {"min_margin": 5.0}, "model": scores, "baselines": {"copy": copy}}))
    export(run, tmp_path / "hf", "hf", report=report)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n")  # a local directory: its licence is not known here
    assert "- base: `tiny-gpt2`" in card and "LoRA rank 4 (merged into the weights)" in card
    assert "- data: not recorded" in card and "Corrigez le texte suivant.\n{text}\n=>\n```" in card
    assert "| `min_margin` | 5.0 |" in card and "| `max_stretch_edits` | 1 |" in card
    assert "| this model, guarded | 0.349 | 0.005 | 1.000 | 0.385 | — | — | — |" in card
    assert "| copy | 0.000 | 0.000 | 1.000 | 0.145 | — | — | — |" in card
    assert "correcteur's code and its embedded training corpus: MIT" in card


def test_model_card_of_a_registered_base_gives_its_hub_page_and_licence(tmp_path, gguf_base):
    model, tokenizer = weights.llama_from_gguf(gguf_base), LlamaTokenizer.from_gguf(gguf_base)
    meta = {**tiny_meta(model, tokenizer), "model_name": "smollm2-135m", "base": {"name": "smollm2-135m"}}
    save_checkpoint(tmp_path / "run" / "best.pt", inference_state(model, meta, step=3, val_loss=0.5))
    with pytest.raises(UserError, match="tokenizer"):  # no tokenizer/ and no SmolLM2 file in this folder
        export(tmp_path / "run", tmp_path / "x", "hf")
    from correcteur.tokenizer import save_tokenizer

    save_tokenizer(tokenizer, tmp_path / "run" / "tokenizer")
    export(tmp_path / "run", tmp_path / "gguf", "gguf", "q8_0")
    card = (tmp_path / "gguf" / "README.md").read_text()
    assert "license: apache-2.0" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "GGUF, q8_0" in card and "ollama create correcteur -f Modelfile" in card
    assert "No evaluation report was given" in card and "No guard was tuned" in card


def test_export_refusals_are_one_line_messages(tmp_path, tiny_gpt, capsys):
    meta = {"model_cfg": tiny_gpt.cfg, "family": "gpt2", "model_name": "t", "tokenizer": "gpt2", "prompt_style": "short"}
    save_checkpoint(tmp_path / "best.pt", inference_state(tiny_gpt, meta, step=1, val_loss=1.0))
    (tmp_path / "file").write_text("x")
    for args, message in [(["--format", "gguf", "--out", str(tmp_path / "g")], "GGUF export is written for the Llama"),
                          (["--format", "hf", "--out", str(tmp_path / "file")], "is a file"),
                          (["--format", "hf", "--out", str(tmp_path / "h"), "--report", str(tmp_path / "no.json")],
                           "does not exist")]:
        assert main(["export", "--checkpoint", str(tmp_path), *args]) == 2
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real SmolLM2


@pytest.mark.slow
@pytest.mark.skipif(not REAL_GGUF.is_file(), reason=f"{REAL_GGUF} not downloaded")
def test_real_smollm2_exports_to_transformers_and_gguf(tmp_path, real_smollm2):
    model, tokenizer, info = real_smollm2
    meta = {"model_cfg": model.cfg, "family": "llama", "model_name": "smollm2-135m", "prompt_style": "short",
            "input_prefix": "", "base": info}
    export_hf(model, tokenizer, meta, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["tie_word_embeddings"], config["rope_theta"], config["rms_norm_eps"], config["head_dim"]) == (
        True, 100000.0, 1e-5, 64)
    ids = torch.tensor([tokenizer.encode(correction_prompt(FRENCH[0], "short"))])
    ours = our_logits(model, ids)
    assert (hf_logits(tmp_path / "hf", ids) - ours).abs().max().item() < 1e-4
    assert_same_tokenizer(tmp_path / "hf", tokenizer)

    # Read back by llama.cpp's own reader (the full reload through our loader, measured once:
    # the same next token, logits within 0.04 of 32 in f16 and 1.25 in q8_0, is left to the
    # tiny models above: dequantizing 135 M weights takes 11 s here).
    path, _ = export_gguf(model, tokenizer, meta, tmp_path / "gguf", "q8_0")
    n_weights = sum(p.numel() for p in model.parameters())
    assert 8.4 < path.stat().st_size * 8 / n_weights < 9  # q8_0: 34 bytes per 32 weights
    reader = gguf.GGUFReader(path)
    assert {t.name: t.tensor_type.name for t in reader.tensors}["blk.29.ffn_down.weight"] == "Q8_0"
    assert len(reader.tensors) == 2 + 9 * 30  # embedding and final norm, 9 per layer, the head tied
    reread = LlamaTokenizer.from_gguf(path, reader)
    assert all(reread.encode(text) == tokenizer.encode(text) for text in TEXTS)
    assert (reread.eot_token, reread.bos_id) == (tokenizer.eot_token, tokenizer.bos_id) == (2, 1)
