"""Checkpoints: atomic writes, exact resume, inference loading, half-precision export."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest
import torch
from test_train import (  # noqa: F401 - single_thread is an autouse fixture
    PAIRS,
    CharTokenizer,
    single_thread,
    tiny_config,
    tiny_model,
    write_data,
)

import correcteur.train as train_module
from correcteur import checkpoint
from correcteur.checkpoint import (
    export_half,
    inference_state,
    load_checkpoint,
    load_for_inference,
    save_checkpoint,
)
from correcteur.errors import UserError
from correcteur.generate import generate
from correcteur.train import train


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format_version": 1, "weights": torch.arange(3)})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        save_checkpoint(path, {"format_version": 1, "weights": lambda: None})
    assert load_checkpoint(path)["weights"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_garbage_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="x.pt"):
        load_checkpoint(tmp_path / "x.pt")


class NotAWeight:
    """A pickled object of a class, which torch.load(weights_only=True) refuses to build."""


@pytest.mark.parametrize("content", ["pickled object", "truncated", "garbage"])
def test_a_foreign_or_damaged_file_is_named_so_without_hinting_at_unsafe_loading(tmp_path, content):
    path = tmp_path / "x.pt"
    if content == "pickled object":
        torch.save({"format_version": 1, "model": NotAWeight()}, path)
    elif content == "garbage":
        path.write_bytes(b"<html>mirror error page</html>")
    else:
        save_checkpoint(path, {"format_version": 1, "model": {"w": torch.arange(1000.0)}})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a checkpoint of this project, or it is damaged (")
    assert ("Python objects" in message) == (content == "pickled object")
    assert not any(word in message.lower() for word in ("weights_only", "trust", "torch.load", "re-running"))


# ----------------------------------------------------------------------------- resume


def _resume_config(tmp_path, run_name, **overrides):
    # Dropout (RNG), length grouping and accumulation (data order), an impatient scheduler
    # (its state): everything a resume must restore is in play.
    return tiny_config(tmp_path, run_name=run_name, grad_accum_steps=2, group_by_length=True,
                       eval_freq=2, checkpoint_every=2, lr_patience=0, lr_factor=0.5,
                       num_epochs=4, **overrides)


def _final(run):
    last = load_checkpoint(run / "last.pt")
    losses = [(r["step"], r["train_loss"], r["val_loss"], r["lr"], r["tokens_seen"]) for r in last["state"]["history"]]
    return last["model"], losses


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """8 steps straight == 4 steps, stop, resume for 4; and == Ctrl-C at step 3, resume."""
    # 3 steps an epoch, so the stops fall mid-epoch; validation answers that contradict the
    # training ones make the validation loss worsen, so the scheduler lowers the rate.
    write_data(tmp_path / "data", PAIRS, [(w, "zzzz zzzz") for w, _ in PAIRS[:4]])
    tok = CharTokenizer()
    straight = train(_resume_config(tmp_path, "straight", max_steps=8), model=tiny_model(0.1), tokenizer=tok)

    train(_resume_config(tmp_path, "split", max_steps=4), model=tiny_model(0.1), tokenizer=tok)
    assert load_checkpoint(tmp_path / "runs/split/last.pt")["state"]["step"] == 4
    train(_resume_config(tmp_path, "split", max_steps=8), model=tiny_model(0.1), tokenizer=tok, resume=True)

    calls = 0
    real_loss = train_module.calc_loss_batch

    def interrupted_at_third_step(*args):
        nonlocal calls
        calls += 1
        if calls == 9:  # steps 1-2: 4 micro-batches, the evaluation: 4 batches; then step 3
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args)

    monkeypatch.setattr(train_module, "calc_loss_batch", interrupted_at_third_step)
    with pytest.raises(KeyboardInterrupt, match="step 3"):
        train(_resume_config(tmp_path, "ctrl-c", max_steps=8), model=tiny_model(0.1), tokenizer=tok)
    monkeypatch.setattr(train_module, "calc_loss_batch", real_loss)
    assert load_checkpoint(tmp_path / "runs/ctrl-c/last.pt")["state"]["step"] == 3
    train(_resume_config(tmp_path, "ctrl-c", max_steps=8), model=tiny_model(0.1), tokenizer=tok, resume=True)

    weights, losses = _final(straight.run_dir)
    assert len(losses) == 4 and losses[-1][3] < losses[0][3]  # the scheduler did act
    for run in ("split", "ctrl-c"):
        other_weights, other_losses = _final(tmp_path / "runs" / run)
        for mine, theirs in zip(losses, other_losses, strict=True):
            assert mine == pytest.approx(theirs, rel=0, abs=1e-6)
        for name, tensor in weights.items():
            torch.testing.assert_close(other_weights[name], tensor, rtol=0, atol=1e-6)


def test_a_resumed_run_reports_the_peak_memory_of_its_whole_life(tmp_path):
    write_data(tmp_path / "data", PAIRS, PAIRS[:4])
    tok = CharTokenizer()
    train(_resume_config(tmp_path, "peak", max_steps=4), model=tiny_model(), tokenizer=tok)
    saved = load_checkpoint(tmp_path / "runs/peak/last.pt")
    assert saved["state"]["history"]
    for record in saved["state"]["history"]:
        record["peak_ram_mb"] = 10.0**7  # the first process was the big one
    save_checkpoint(tmp_path / "runs/peak/last.pt", saved)
    resumed = train(_resume_config(tmp_path, "peak", max_steps=8), model=tiny_model(), tokenizer=tok, resume=True)
    assert resumed.summary["peak_ram_mb"] == 10.0**7


def test_resume_refuses_another_run(tmp_path):
    write_data(tmp_path / "data", PAIRS[:4], PAIRS[:2])
    tok = CharTokenizer()
    train(tiny_config(tmp_path, max_steps=1), model=tiny_model(), tokenizer=tok)
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny_config(tmp_path, max_steps=1), model=tiny_model(), tokenizer=tok)
    with pytest.raises(UserError, match="lr"):
        train(tiny_config(tmp_path, lr=1.0), model=tiny_model(), tokenizer=tok, resume=True)
    bigger = tiny_model()
    bigger.cfg = {**bigger.cfg, "n_layers": 3}
    with pytest.raises(UserError, match="same --model"):
        train(tiny_config(tmp_path), model=bigger, tokenizer=tok, resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_config(tmp_path, run_name="new"), model=tiny_model(), tokenizer=tok, resume=True)


# ----------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model that has learnt the pairs well enough to answer them confidently."""
    tmp_path = tmp_path_factory.mktemp("trained")
    write_data(tmp_path / "data", PAIRS[:4] * 3, PAIRS[:4])  # 6 steps an epoch
    config = tiny_config(tmp_path, num_epochs=15, lr=1e-2, eval_freq=30)
    return train(config, model=tiny_model(), tokenizer=CharTokenizer())


def _greedy(model, prompts: list[str]) -> list[str]:
    tok = CharTokenizer()
    answers = []
    for prompt in prompts:
        idx = torch.tensor([tok.encode(prompt)])
        out = generate(model, idx, max_new_tokens=24, context_size=model.context_length, eos_id=tok.eot_token)
        answers.append(tok.decode(out[0, idx.shape[1]:].tolist()))
    return answers


def _prompts():
    from test_train import entries

    from correcteur.prompt import build_prompt

    return [build_prompt(e, "short") for e in entries(PAIRS[:4])]


def test_load_for_inference_rebuilds_the_best_model(trained_run):
    run = trained_run.run_dir
    for path in (run, run / "best.pt"):
        model, tok, meta = load_for_inference(path, tokenizer=CharTokenizer())
        assert (meta["model_name"], meta["family"], meta["tokenizer"], meta["prompt_style"]) == (
            "tiny", "gpt2", "chars", "short")
        assert meta["model_cfg"] == trained_run.model.cfg and not model.training
        for name, tensor in trained_run.model.state_dict().items():
            assert torch.equal(model.state_dict()[name], tensor)
    assert _greedy(model, _prompts())[:2] == ["il a mangé", "les enfants jouent"]


def test_load_for_inference_finds_the_tokenizer_by_name(tmp_path, tiny_gpt):
    meta = {"model_cfg": tiny_gpt.cfg, "family": "gpt2", "model_name": "tiny-gpt2",
            "tokenizer": "gpt2", "prompt_style": "alpaca"}
    save_checkpoint(tmp_path / "best.pt", inference_state(tiny_gpt, meta, step=0, val_loss=float("inf")))
    model, tok, _ = load_for_inference(tmp_path)
    assert tok.name == "gpt2" and tok.decode(tok.encode("déjà")) == "déjà"
    assert torch.equal(model.tok_emb.weight, tiny_gpt.tok_emb.weight)
    assert model.out_head.weight is model.tok_emb.weight  # still tied


def test_a_checkpoint_that_does_not_match_its_config_is_refused(tmp_path, trained_run):
    payload = load_checkpoint(trained_run.run_dir / "best.pt")
    payload["model_cfg"] = {**payload["model_cfg"], "emb_dim": 64}
    save_checkpoint(tmp_path / "edited.pt", payload)
    with pytest.raises(UserError, match="do not match"):
        load_for_inference(tmp_path / "edited.pt", tokenizer=CharTokenizer())
    with pytest.raises(UserError, match="best.pt next to it"):
        load_for_inference(trained_run.run_dir / "last.pt", tokenizer=CharTokenizer())


def tensor_bytes(payload: dict) -> int:
    unique = {t.data_ptr(): t for t in payload["model"].values()}  # tied weights are stored once
    return sum(t.numel() * t.element_size() for t in unique.values())


def test_half_export_is_half_the_size_and_answers_the_same(tmp_path, trained_run):
    best = trained_run.run_dir / "best.pt"
    out = export_half(trained_run.run_dir, tmp_path / "best-bf16.pt")
    assert tensor_bytes(load_checkpoint(out)) * 2 == tensor_bytes(load_checkpoint(best))
    assert out.stat().st_size / best.stat().st_size < 0.6  # + a few kB of metadata

    fp32, _, _ = load_for_inference(best, tokenizer=CharTokenizer())
    upcast, _, meta = load_for_inference(out, tokenizer=CharTokenizer())
    kept, _, _ = load_for_inference(out, tokenizer=CharTokenizer(), dtype=None)
    assert meta["dtype"] == "bfloat16" and upcast.tok_emb.weight.dtype == torch.float32
    assert kept.tok_emb.weight.dtype == torch.bfloat16

    # bf16 keeps 8 bits of mantissa: weights round by at most 2^-9 of their size; on this tiny
    # model the logits move by a few hundredths, never enough to change a confident greedy choice.
    for name, tensor in fp32.state_dict().items():
        torch.testing.assert_close(upcast.state_dict()[name], tensor, rtol=2**-8, atol=0)
    idx = torch.tensor([CharTokenizer().encode(_prompts()[0])])
    with torch.no_grad():
        torch.testing.assert_close(upcast(idx), fp32(idx), rtol=0, atol=0.1)
    assert _greedy(upcast, _prompts()) == _greedy(fp32, _prompts()) == _greedy(kept, _prompts())


def test_lora_keeps_adapters_in_last_and_merges_them_in_best(tmp_path):
    lora = pytest.importorskip("correcteur.lora")
    write_data(tmp_path / "data", PAIRS[:4], PAIRS[:2])
    config = tiny_config(tmp_path, lora_rank=4, lora_alpha=8, max_steps=2, eval_freq=2, lr=1e-2)
    result = train(config, model=tiny_model(), tokenizer=CharTokenizer())

    last = load_checkpoint(result.run_dir / "last.pt")
    assert last["lora"] and len(last["model"]) == 2 * 6 * 2  # A and B of 6 projections, 2 layers
    assert all(key.endswith((".A", ".B")) for key in last["model"])
    model, _, _ = load_for_inference(result.run_dir, tokenizer=CharTokenizer())
    assert set(model.state_dict()) == set(tiny_model().state_dict())
    base = tiny_model()
    assert not torch.equal(model.trf_blocks[0].att.W_query.weight, base.trf_blocks[0].att.W_query.weight)

    resumed = train(tiny_config(tmp_path, lora_rank=4, lora_alpha=8, max_steps=3, eval_freq=2, lr=1e-2),
                    model=tiny_model(), tokenizer=CharTokenizer(), resume=True)
    assert resumed.summary["steps"] == 3
    assert lora.count_trainable(resumed.model) == lora.count_trainable(tiny_model())  # merged


def test_lora_adapters_alone_rebuild_the_fine_tuned_model(tmp_path, tokenizer):
    """adapters.pt holds only the LoRA weights; loading it rebuilds the base model, applies and
    merges them, and gives the same model as best.pt."""
    write_data(tmp_path / "data", PAIRS[:4], PAIRS[:2])
    config = tiny_config(tmp_path, model="gpt2-tiny", allow_scratch=True, lora_rank=4, lora_alpha=8,
                         max_steps=2, eval_freq=2, lr=1e-2)
    run_dir = train(config).run_dir
    best, _, _ = load_for_inference(run_dir / "best.pt")
    rebuilt, _, meta = load_for_inference(run_dir / "adapters.pt")
    assert meta["kind"] == "adapters" and meta["lora"]["rank"] == 4
    assert meta["base_model"]["models_dir"] == str(Path(config.models_dir).resolve())  # where its base lives
    idx = torch.tensor([tokenizer.encode("Il a manger une pomme.")])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(idx), best(idx), rtol=0, atol=1e-5)
    assert (run_dir / "adapters.pt").stat().st_size < 0.2 * (run_dir / "best.pt").stat().st_size


def test_adapters_rebuild_their_base_from_the_recorded_folder_or_the_default(tmp_path, monkeypatch):
    asked = []

    def load_base_model(name, models_dir="checkpoints", **kwargs):
        asked.append(models_dir)
        raise RuntimeError("stop here")

    monkeypatch.setattr(checkpoint, "load_base_model", load_base_model)
    payload = {"base_model": {"name": "smollm2-135m", "allow_scratch": False, "seed": 1, "models_dir": str(tmp_path)}}
    for models_dir in (str(tmp_path), str(tmp_path / "moved-away")):
        payload["base_model"]["models_dir"] = models_dir
        with pytest.raises(RuntimeError, match="stop here"):
            checkpoint._base_with_adapters(payload)
    assert asked == [str(tmp_path), "checkpoints"]  # a folder that is gone falls back to the default


def test_export_command_writes_a_half_checkpoint(tmp_path, capsys):
    from correcteur.checkpoint import save_checkpoint
    from correcteur.cli import main
    from correcteur.model import GPTModel

    model = GPTModel({"vocab_size": 64, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
                      "drop_rate": 0.0, "qkv_bias": True})
    save_checkpoint(tmp_path / "best.pt", {"format_version": 1, "kind": "inference", "model": model.state_dict(),
                                           "dtype": "float32", "model_cfg": model.cfg, "family": "gpt2",
                                           "tokenizer": "gpt2", "prompt_style": "short"})
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "half.pt")]) == 0
    half = load_checkpoint(tmp_path / "half.pt")
    assert half["dtype"] == "bfloat16" and all(t.dtype == torch.bfloat16 for t in half["model"].values())
    assert "bfloat16" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")]) == 2


# ----------------------------------------------------------------------------- self-contained run folders


def test_a_run_folder_holds_its_config_and_tokenizer_and_old_folders_still_load(tmp_path, tiny_gpt, tokenizer):
    """A run writes train_config.json and tokenizer/ (GPT-2's vocabulary in Hugging Face's
    layout); a folder of the earlier layout (config.json, no tokenizer/) still loads, resumes,
    and comes out of the resumed run in the new layout."""
    import json
    import shutil

    from correcteur.tokenizer import load_tokenizer_folder
    from correcteur.train import resumed_config

    write_data(tmp_path / "data", PAIRS[:4], PAIRS[:2])
    config = tiny_config(tmp_path, model="gpt2-test", max_steps=2)
    run = train(config, model=tiny_gpt, tokenizer=tokenizer).run_dir
    assert json.loads((run / "train_config.json").read_text()) == dataclasses.asdict(config)
    assert not (run / "config.json").exists()
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == [
        "merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    copied = load_tokenizer_folder(run / "tokenizer")
    text = "Les élèves ont réussi l'examen : 18/20 !"
    assert copied.encode(text) == tokenizer.encode(text) and copied.n_vocab == tokenizer.n_vocab
    model, _, _ = load_for_inference(run)

    (run / "train_config.json").rename(run / "config.json")  # the earlier layout
    shutil.rmtree(run / "tokenizer")
    old_model, old_tokenizer, meta = load_for_inference(run)
    assert old_tokenizer.name == meta["tokenizer"] == "gpt2"
    for name, tensor in model.state_dict().items():
        assert torch.equal(old_model.state_dict()[name], tensor)
    again = resumed_config({"model": "gpt2-test", "out_dir": config.out_dir, "max_steps": 3})
    assert again == dataclasses.replace(config, max_steps=3)
    train(again, model=tiny_gpt, tokenizer=tokenizer, resume=True)
    assert (run / "train_config.json").is_file() and not (run / "config.json").exists()
    assert (run / "tokenizer" / "vocab.json").is_file()


def test_a_tokenizer_folder_with_another_vocabulary_is_not_taken_for_gpt2(tmp_path, tokenizer):
    import json

    from correcteur.tokenizer import load_tokenizer_folder, save_tokenizer

    save_tokenizer(tokenizer, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    vocab["Ġthe"], vocab["Ġof"] = vocab["Ġof"], vocab["Ġthe"]  # two ids swapped
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match="not GPT-2's vocabulary"):
        load_tokenizer_folder(tmp_path)
