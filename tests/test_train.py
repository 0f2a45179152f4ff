"""Batches, masking and the training loop, on tiny models and a handful of French pairs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import string

import pytest
import torch

from correcteur import cli
from correcteur.batches import InstructionDataset, batch_order, custom_collate_fn
from correcteur.errors import UserError
from correcteur.model import GPTModel
from correcteur.prompt import build_prompt
from correcteur.train import TrainConfig, calc_loss_loader, plot_losses, resumed_config, train

PAD = 50256


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run faster on one thread, and much faster on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CharTokenizer:
    """One id per character: small vocabulary, tiny models, fast tests."""

    name = "chars"
    alphabet = string.printable + "àâçéèêëîïôûùüÿœæÀÂÇÉÈÊËÎÏÔÛÙÜŸŒÆ’«»"

    def __init__(self):
        self.ids = {c: i for i, c in enumerate(self.alphabet)}
        self.eot_token = len(self.alphabet)
        self.n_vocab = self.eot_token + 1

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        return [self.ids[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids if i < self.eot_token)


def tiny_model(drop_rate: float = 0.0, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel({"vocab_size": CharTokenizer().n_vocab, "context_length": 96, "emb_dim": 32,
                     "n_heads": 2, "n_layers": 2, "drop_rate": drop_rate, "qkv_bias": True})


PAIRS = [
    ("il a manger", "il a mangé"),
    ("les enfant joue", "les enfants jouent"),
    ("ces une idée", "c'est une idée"),
    ("a demain", "à demain"),
    ("je suis aller", "je suis allé"),
    ("tu est la", "tu es là"),
    ("elle a finit", "elle a fini"),
    ("nous avont vu", "nous avons vu"),
    ("il fait froit", "il fait froid"),
    ("on se voit ou", "on se voit où"),
]


def entries(pairs) -> list[dict]:
    return [{"instruction": "Corrigez.", "input": wrong, "output": right, "source": "test",
             "sentence_id": f"t-{i}", "error_types": ["x"]} for i, (wrong, right) in enumerate(pairs)]


def write_data(folder, train_pairs, val_pairs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.json").write_text(json.dumps(entries(train_pairs)), encoding="utf-8")
    (folder / "val.json").write_text(json.dumps(entries(val_pairs)), encoding="utf-8")
    return folder


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(model="tiny", data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"),
                    prompt_style="short", lr=3e-3, num_epochs=2, batch_size=2, eval_freq=2,
                    eval_iter=2, patience=100, checkpoint_every=1000, device="cpu", seed=7)
    return TrainConfig(**{**settings, **overrides})


# ----------------------------------------------------------------------------- collate


def test_collate_has_the_course_semantics():
    """The course's own example: one end-of-text kept per row, the padding after it ignored."""
    inputs, targets = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]]
    assert targets.tolist() == [[1, 2, 3, 4, PAD], [6, PAD, -100, -100, -100], [8, 9, PAD, -100, -100]]


def test_collate_masks_the_prompt_tokens():
    batch = [([10, 11, 12, 13, 14], 3), ([20, 21, 22], 2)]  # (token ids, prompt length)
    inputs, targets = custom_collate_fn(batch, pad_token_id=99)
    assert inputs.tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, 99, 99]]
    # Row 0: the prompt is 10 11 12, so the first target to learn is 13 (predicted from 12).
    assert targets.tolist() == [[-100, -100, 13, 14, 99], [-100, 22, 99, -100, -100]]

    _, unmasked = custom_collate_fn(batch, pad_token_id=99, mask_instruction=False)
    assert unmasked.tolist() == [[11, 12, 13, 14, 99], [21, 22, 99, -100, -100]]

    inputs, targets = custom_collate_fn(batch, pad_token_id=99, allowed_max_length=3)
    assert inputs.tolist() == [[10, 11, 12], [20, 21, 22]]
    assert targets.tolist() == [[-100, -100, 13], [-100, 22, 99]]


def test_dataset_keeps_prompt_lengths_and_drops_overlong_examples():
    tok = CharTokenizer()
    data = entries(PAIRS[:3])
    lengths = [len(build_prompt(e, "short")) + len(e["output"]) for e in data]
    limit = sorted(lengths)[1]  # keeps the two shortest, drops the longest
    dataset = InstructionDataset(data, tok, prompt_style="short", max_length=limit)
    assert dataset.dropped == 1 and len(dataset) == 2
    for ids, prompt_length in dataset:
        entry = next(e for e in data if tok.decode(ids).endswith(e["output"]))
        assert prompt_length == len(build_prompt(entry, "short"))
        assert tok.decode(ids) == build_prompt(entry, "short") + entry["output"]
        assert len(ids) <= limit


# ----------------------------------------------------------------------------- data order


def test_batch_order_is_a_seeded_cover_of_the_data():
    lengths = [5, 40, 7, 33, 12, 50, 3, 21, 9, 45, 18]
    first = batch_order(lengths, 3, seed=1, epoch=0)
    assert first == batch_order(lengths, 3, seed=1, epoch=0)
    assert first != batch_order(lengths, 3, seed=1, epoch=1)
    assert sorted(i for b in first for i in b) == list(range(len(lengths)))
    assert [len(b) for b in first] == [3, 3, 3, 2]

    grouped = batch_order(lengths, 3, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(len(lengths)))

    def padding(batches):
        return sum(max(lengths[i] for i in b) - lengths[i] for b in batches for i in b)

    # One window holds all 11 examples: batches are consecutive runs of the sorted lengths.
    assert padding(grouped) == padding([[5, 1, 9], [3, 7, 10], [4, 8, 2], [0, 6]])
    assert padding(grouped) < padding(first)


def test_calc_loss_loader_follows_the_course():
    model = tiny_model()
    assert calc_loss_loader([], model, "cpu") != calc_loss_loader([], model, "cpu")  # NaN
    batch = custom_collate_fn([[1, 2, 3], [4, 5]], pad_token_id=CharTokenizer().eot_token)
    other = custom_collate_fn([[7, 8, 9, 10]], pad_token_id=CharTokenizer().eot_token)
    with torch.no_grad():
        one = calc_loss_loader([batch, other], model, "cpu", num_batches=1)
        both = calc_loss_loader([batch, other], model, "cpu", num_batches=10)
        second = calc_loss_loader([other], model, "cpu")
    assert both == pytest.approx((one + second) / 2)


def test_train_model_simple_is_the_course_loop(capsys):
    """The course's setting (chapter 7): DataLoaders over `InstructionDataset` with a partial of
    `custom_collate_fn`, AdamW, `num_epochs`, `eval_freq`, `eval_iter`. Its losses equal a
    reference loop written here the plain way (full logits, the course's cross-entropy), and it
    prints what the course prints."""
    from functools import partial

    from torch.utils.data import DataLoader

    from correcteur.prompt import format_input
    from correcteur.train import train_model_simple

    tok = CharTokenizer()
    collate = partial(custom_collate_fn, pad_token_id=tok.eot_token, device="cpu")
    train_set = InstructionDataset(entries(PAIRS[:6]), tok, "short")
    val_set = InstructionDataset(entries(PAIRS[6:]), tok, "short")

    def loaders():
        torch.manual_seed(123)  # the shuffle of the training loader
        return (DataLoader(train_set, batch_size=2, collate_fn=collate, shuffle=True, drop_last=True),
                DataLoader(val_set, batch_size=2, collate_fn=collate, shuffle=False))

    def plain_loss(model, loader, n):
        losses = [torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                  for x, y in list(loader)[:n]]
        return sum(losses) / len(losses)

    model = tiny_model(seed=3)
    train_loader, val_loader = loaders()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    expected_train, expected_val, expected_tokens, seen, step = [], [], [], 0, -1
    for _ in range(2):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
            optimizer.step()
            seen, step = seen + x.numel(), step + 1
            if step % 2 == 0:
                model.eval()
                with torch.no_grad():
                    expected_train.append(plain_loss(model, train_loader, 2))
                    expected_val.append(plain_loss(model, val_loader, 2))
                expected_tokens.append(seen)
                model.train()

    model = tiny_model(seed=3)
    train_loader, val_loader = loaders()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=2, eval_freq=2, eval_iter=2,
        start_context=format_input(entries(PAIRS[6:])[0], "short"), tokenizer=tok)

    assert len(train_losses) == len(val_losses) == len(tokens_seen) == 3  # steps 0, 2, 4 of 6
    assert train_losses == pytest.approx(expected_train, rel=1e-5)
    assert val_losses == pytest.approx(expected_val, rel=1e-5)
    assert tokens_seen == expected_tokens
    assert train_losses[-1] < train_losses[0]
    printed = capsys.readouterr().out
    assert "Ep 1 (Step 000000): Train loss " in printed and "Ep 2 (Step 000004)" in printed
    assert printed.count("Corrigez.") == 2  # one sample continuation per epoch, from start_context


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("state, elapsed, interrupted, reason", [
    ({}, 0.0, False, None),
    ({}, 0.0, True, "interrupted"),
    ({"bad_evals": 2, "epoch": 2, "step": 9}, 999.0, True, "interrupted"),  # the first answer wins
    ({"bad_evals": 2, "epoch": 2, "step": 9}, 999.0, False, "early_stopping"),
    ({"epoch": 2, "step": 9}, 999.0, False, "completed"),
    ({"step": 9}, 0.0, False, "budget"),
    ({}, 60.0, False, "budget"),
])
def test_should_stop_is_the_one_stop_test_in_its_order(tmp_path, state, elapsed, interrupted, reason):
    from correcteur.train import TrainState, should_stop

    config = tiny_config(tmp_path, patience=2, num_epochs=2, max_steps=9, max_minutes=1.0)
    assert should_stop(config, TrainState(**state), elapsed, interrupted) == reason


def test_early_stopping_on_the_last_step_of_an_epoch_does_not_count_the_epoch(tmp_path):
    """With a learning rate too small to change a float32 weight, the second evaluation (step 6,
    the end of the second epoch) is no better: patience 1 stops there, within that epoch."""
    write_data(tmp_path / "data", PAIRS[:6], PAIRS[6:])  # 3 steps an epoch
    config = tiny_config(tmp_path, num_epochs=3, lr=1e-30, eval_freq=3, eval_iter=1, patience=1)
    summary = train(config, model=tiny_model(), tokenizer=CharTokenizer()).summary
    assert (summary["stop_reason"], summary["steps"], summary["epochs_done"]) == ("early_stopping", 6, 1)


def test_overfits_a_tiny_batch(tmp_path):
    write_data(tmp_path / "data", PAIRS[:2] * 5, PAIRS[:2])  # 5 steps an epoch
    config = tiny_config(tmp_path, num_epochs=30, lr=1e-2, eval_freq=150, max_grad_norm=0.0)
    result = train(config, model=tiny_model(), tokenizer=CharTokenizer())
    assert result.history[-1]["train_loss"] < 0.1
    assert result.summary["stop_reason"] == "completed" and result.summary["steps"] == 150
    saved = json.loads((result.run_dir / "train_config.json").read_text())
    assert saved == dataclasses.asdict(config)
    assert json.loads((result.run_dir / "history.json").read_text()) == result.history


def test_early_stopping_ends_training_and_keeps_the_best_weights(tmp_path):
    """Validation answers contradict the training answers: the validation loss gets worse as
    training goes on, so the best evaluation is the first one."""
    write_data(tmp_path / "data", PAIRS, [(w, "zzzz zzzz") for w, _ in PAIRS[:4]])
    config = tiny_config(tmp_path, eval_freq=1, patience=3, num_epochs=10)
    result = train(config, model=tiny_model(), tokenizer=CharTokenizer())

    assert result.summary["stop_reason"] == "early_stopping"
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]  # of 50 steps planned
    assert result.summary["best_step"] == 1
    val = [r["val_loss"] for r in result.history]
    assert min(val) == val[0]

    after_one_step = train(tiny_config(tmp_path, run_name="one", max_steps=1),
                           model=tiny_model(), tokenizer=CharTokenizer()).model
    for name, tensor in after_one_step.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[name], tensor, rtol=0, atol=0)


def test_records_each_evaluation(tmp_path):
    write_data(tmp_path / "data", PAIRS, PAIRS[:2])
    result = train(tiny_config(tmp_path, grad_accum_steps=2, max_steps=4),
                   model=tiny_model(), tokenizer=CharTokenizer())
    assert [r["step"] for r in result.history] == [2, 4]
    assert [r["epoch"] for r in result.history] == [0, 1]  # 10 examples = 3 steps an epoch
    record = result.history[-1]
    assert set(record) >= {"step", "epoch", "train_loss", "val_loss", "tokens_seen", "lr",
                           "wall_time_s", "peak_ram_mb"}
    assert record["tokens_seen"] > result.history[0]["tokens_seen"] > 0
    assert result.summary["stop_reason"] == "budget"


def test_plot_losses_saves_a_png(tmp_path):
    fig = plot_losses([0, 1, 2], [10, 20, 30], [3.0, 2.0, 1.5], [3.1, 2.5, 2.4], path=tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [line.get_ydata().tolist() for line in fig.axes[0].lines] == [[3.0, 2.0, 1.5], [3.1, 2.5, 2.4]]


# ----------------------------------------------------------------------------- command line


def test_every_train_option_has_help():
    parser = argparse.ArgumentParser()
    cli.add_train(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) == len(dataclasses.fields(TrainConfig)) + 1  # + --resume
    assert all(a.help and "(default: " in a.help for a in options if a.dest != "resume")
    args = parser.parse_args(["--model", "gpt2", "--data", "d", "--out", "o", "--no-mask-instruction",
                              "--max-steps", "3"])
    assert (args.model, args.data_dir, args.out_dir, args.mask_instruction, args.max_steps) == (
        "gpt2", "d", "o", False, 3)
    assert not hasattr(args, "lr")  # not given: `--resume` must tell it from an explicit --lr


def test_missing_or_malformed_data_is_a_user_error(tmp_path, capsys):
    status = cli.main(["train", "--model", "gpt2-cpu", "--allow-scratch", "--data", str(tmp_path / "nope"),
                       "--out", str(tmp_path / "runs")])
    assert status == 2 and "train.json" in capsys.readouterr().err

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.json").write_text('[{"input": "x"}]')
    with pytest.raises(UserError, match="keys"):
        train(tiny_config(tmp_path, data_dir=str(tmp_path / "bad")), model=tiny_model(), tokenizer=CharTokenizer())


def test_resume_takes_the_settings_not_given_from_the_run(tmp_path):
    from correcteur.files import write_json

    first = tiny_config(tmp_path, lr=1e-3, batch_size=4)
    write_json(first.run_dir / "config.json", dataclasses.asdict(first))  # an older run folder
    given = {"model": "tiny", "out_dir": first.out_dir, "max_steps": 9}  # `--resume --max-steps 9`
    assert resumed_config(given) == dataclasses.replace(first, max_steps=9)
    # An option given explicitly is applied even when it equals the default (5e-5), never
    # silently replaced by the saved value; train() then refuses it (see test_checkpoint).
    assert resumed_config({**given, "lr": 5e-5}).lr == 5e-5


def test_resume_refuses_an_explicit_option_that_would_change_the_run(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    entries = [{"instruction": "Corrigez le texte suivant.", "input": f"Il a manger {i}.", "output": f"Il a mangé {i}."}
               for i in range(6)]
    for split in ("train", "val"):
        (data / f"{split}.json").write_text(json.dumps(entries), encoding="utf-8")
    common = ["train", "--model", "gpt2-tiny", "--allow-scratch", "--data", str(data), "--out", str(tmp_path / "runs"),
              "--prompt-style", "short", "--batch-size", "2", "--eval-freq", "2", "--eval-iter", "1"]
    assert cli.main([*common, "--max-steps", "2", "--lr", "1e-3"]) == 0
    assert cli.main(["train", "--model", "gpt2-tiny", "--out", str(tmp_path / "runs"), "--resume",
                     "--lr", "5e-5"]) == 2  # the default learning rate, given explicitly: refused
    assert "lr: 0.001 in the checkpoint, 5e-05 now" in capsys.readouterr().err
    assert cli.main(["train", "--model", "gpt2-tiny", "--out", str(tmp_path / "runs"), "--resume",
                     "--max-steps", "3"]) == 0  # a budget may change: applied
    summary = json.loads((tmp_path / "runs" / "gpt2-tiny" / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 3


@pytest.mark.parametrize("setting", [{"lr": 0.0}, {"batch_size": 0}, {"lora_rank": -1}, {"eval_freq": -5}])
def test_impossible_settings_are_refused_with_a_message(tmp_path, setting):
    with pytest.raises(UserError, match="invalid training settings"):
        tiny_config(tmp_path, **setting)


@pytest.mark.parametrize("content, message", [
    (None, "build the dataset first"), ("[{", "not a valid JSON file"), ("[]", "non-empty JSON list"),
    ('[{"input": "a", "output": "b"}]', "'instruction'")])
def test_bad_splits_are_refused_with_a_reason(tmp_path, content, message):
    from correcteur.train import load_split

    if content is not None:
        (tmp_path / "train.json").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_split(tmp_path, "train")


def test_resume_refuses_a_dataset_whose_input_prefix_changed(tmp_path):
    """Entries never carry the prefix, so only the manifest can tell that the prompts changed."""
    write_data(tmp_path / "data", PAIRS[:6], PAIRS[6:])
    train(tiny_config(tmp_path, max_steps=1), model=tiny_model(), tokenizer=CharTokenizer())
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"config": {"input_prefix": "grammaire: "}}))
    with pytest.raises(UserError, match="input prefix changed"):
        train(tiny_config(tmp_path, max_steps=2), model=tiny_model(), tokenizer=CharTokenizer(), resume=True)
