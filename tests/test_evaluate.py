"""respond is batched, guarded and resumable; evaluate scores the model beside the baselines."""

import dataclasses
import json

import pytest

from correcteur.cli import main
from correcteur.evaluate import EvalConfig, evaluate
from correcteur.guard import GuardConfig
from correcteur.guard_tuning import guard_settings
from correcteur.respond import respond
from correcteur.train import TrainConfig, train

ENTRIES = [
    {"instruction": "Corrigez le texte suivant.", "input": "Il a manger.", "output": "Il a mangé.",
     "error_types": ["er_e"]},
    {"instruction": "Corrigez le texte suivant.", "input": "On va à Paris.", "output": "On va à Paris.",
     "error_types": []},
    {"instruction": "Corrigez le texte suivant.", "input": "Ces une idée.", "output": "C'est une idée.",
     "error_types": ["homophone"]},
]


class ScriptedCorrector:
    """The Corrector interface with answers from a table, counting what it is asked."""

    def __init__(self, answers: dict[str, str], guard=None):
        self.answers, self.guard, self.asked = answers, guard, []

    def answer_parts(self, texts):
        """A text with a ' | ' in it stands for one too long for the context: answered in parts."""
        self.asked += texts
        return [[(part, self.answers.get(part, part), gap)
                 for part, gap in zip(t.split(" | "), [" "] * t.count(" | ") + [""], strict=True)]
                for t in texts]


def test_respond_keeps_raw_and_guarded_answers_and_resumes(tmp_path):
    answers = {"Il a manger.": "Il a mangé.", "On va à Paris.": "On va a Paris.", "Ces une idée.": "C'est une idée."}
    refuse_accent_loss = lambda source, answer: source if "va a" in answer else answer  # noqa: E731
    corrector = ScriptedCorrector(answers, guard=refuse_accent_loss)
    out = tmp_path / "responses.json"
    answered = respond(corrector, ENTRIES, out, batch_size=2, progress=False)
    assert [e["raw_response"] for e in answered] == ["Il a mangé.", "On va a Paris.", "C'est une idée."]
    assert [e["model_response"] for e in answered] == ["Il a mangé.", "On va à Paris.", "C'est une idée."]
    assert sorted(corrector.asked) == sorted(["Il a manger.", "On va à Paris.", "Ces une idée."])
    assert json.loads(out.read_text(encoding="utf-8")) == answered

    again = ScriptedCorrector(answers, guard=refuse_accent_loss)
    assert respond(again, ENTRIES, out, progress=False) == answered
    assert again.asked == []  # everything was already answered by the same checkpoint

    unguarded = ScriptedCorrector(answers)
    assert [e["model_response"] for e in respond(unguarded, ENTRIES, out, progress=False)] == \
        ["Il a mangé.", "On va a Paris.", "C'est une idée."]  # the guard of the run applies, not a stored one

    long = {"instruction": "Corrigez le texte suivant.", "input": "Il a manger. | On va à Paris.",
            "output": "Il a mangé. On va à Paris.", "error_types": ["er_e"]}
    parted = ScriptedCorrector(answers, guard=refuse_accent_loss)
    (answer,) = respond(parted, [long], progress=False)
    assert answer["raw_response"] == "Il a mangé. On va a Paris."
    assert answer["raw_parts"] == [["Il a manger.", "Il a mangé.", " "], ["On va à Paris.", "On va a Paris.", ""]]
    assert answer["model_response"] == "Il a mangé. On va à Paris."  # guarded part by part

    retrained = ScriptedCorrector(answers)
    retrained.meta = {"step": 500, "val_loss": 0.2}
    respond(retrained, ENTRIES, out, progress=False)
    assert len(retrained.asked) == 3  # another checkpoint: nothing of the old answers is reused


@pytest.mark.slow
def test_evaluate_a_tiny_checkpoint(tmp_path, tokenizer, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.json").write_text(json.dumps(ENTRIES * 3), encoding="utf-8")
    run = train(TrainConfig(model="gpt2-tiny", allow_scratch=True, data_dir=str(data), out_dir=str(tmp_path),
                            run_name="tiny", prompt_style="short", lr=1e-3, batch_size=3, eval_freq=2,
                            eval_iter=1, max_steps=2))
    report = evaluate(EvalConfig(checkpoint=str(run.run_dir), test=str(data / "test.json"),
                                 out=str(tmp_path / "eval"), base_model=False, grammalecte=False))
    assert report["n"] == 9
    assert set(report["baselines"]) == {"copy", "model (no guard)"}
    copy = report["baselines"]["copy"]
    assert copy["error_reduction"] == 0 and copy["harm_rate"] == 0 and copy["clean_preserved"] == 1
    assert (tmp_path / "eval" / "report.md").read_text(encoding="utf-8").count("copy") >= 1
    saved = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    assert saved["model"] == report["model"] and saved["config"]["checkpoint"] == str(run.run_dir)
    assert saved["guard"] == dataclasses.asdict(GuardConfig()) and saved["guard_tuned"] is False
    assert "the defaults: no guard.json" in (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")

    assert main(["guard", "--checkpoint", str(run.run_dir), "--val", str(data / "val.json")]) == 0
    tuned = json.loads((run.run_dir / "guard.json").read_text(encoding="utf-8"))
    assert tuned["tuning"]["entries"] == 9 and len(tuned["tuning"]["grid"]) == len(guard_settings())
    assert f"saved: {run.run_dir / 'guard.json'}" in capsys.readouterr().out
    report = evaluate(EvalConfig(checkpoint=str(run.run_dir), test=str(data / "test.json"),
                                 out=str(tmp_path / "eval"), base_model=False, grammalecte=False))
    assert report["guard_tuned"] and report["guard"] == tuned["config"]
    assert main(["guard", "--checkpoint", str(tmp_path / "nothing"), "--val", str(data / "val.json")]) == 2


@pytest.mark.slow
def test_the_input_prefix_is_recorded_once_and_put_in_every_prompt_once(tmp_path, monkeypatch):
    """Data built with a prefix, a model trained on it, the guard tuned, the test split evaluated:
    every prompt the model reads (training, answers, guard scores) carries the prefix exactly once."""
    from correcteur import prompt
    from correcteur.augment import AugmentConfig
    from correcteur.data import DataConfig, build_dataset
    from correcteur.guard_tuning import calibrate_guard

    prefix = "grammaire: "
    sentences = tmp_path / "sentences.csv"
    sentences.write_text("text\n" + "\n".join(f"Les enfants jouent au parc numéro {i}." for i in range(40)),
                         encoding="utf-8")
    data = tmp_path / "data"
    build_dataset(DataConfig(source=str(sentences), out=str(data), input_prefix=prefix,
                             augment=AugmentConfig(variants=1)), lexicon=frozenset({"les", "enfants", "parc"}))
    assert not any(prefix in e["input"] for split in ("train", "val", "test")
                   for e in json.loads((data / f"{split}.json").read_text(encoding="utf-8")))

    prompts = []
    real_format_input = prompt.format_input

    def recording(entry, style="alpaca", input_prefix=""):
        text = real_format_input(entry, style, input_prefix)
        prompts.append(text)
        return text

    monkeypatch.setattr(prompt, "format_input", recording)
    run = train(TrainConfig(model="gpt2-tiny", allow_scratch=True, data_dir=str(data), out_dir=str(tmp_path),
                            run_name="prefixed", prompt_style="short", lr=1e-3, batch_size=4, eval_freq=2,
                            eval_iter=1, max_steps=2))
    trained_prompts = len(prompts)
    calibrate_guard(run.run_dir, data / "val.json", limit=4, batch_size=4)
    evaluate(EvalConfig(checkpoint=str(run.run_dir), test=str(data / "test.json"), out=str(tmp_path / "eval"),
                        limit=4, base_model=False, grammalecte=False))
    assert trained_prompts > 0 and len(prompts) > trained_prompts  # training, and correction / guard scoring
    assert all(text.count(prefix) == 1 for text in prompts), [t for t in prompts if t.count(prefix) != 1][:3]


@pytest.mark.slow
def test_a_failing_judge_still_leaves_the_report(tmp_path, monkeypatch):
    from correcteur import evaluate as evaluate_module
    from correcteur.errors import UserError

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.json").write_text(json.dumps(ENTRIES * 2), encoding="utf-8")
    run = train(TrainConfig(model="gpt2-tiny", allow_scratch=True, data_dir=str(data), out_dir=str(tmp_path),
                            run_name="tiny", prompt_style="short", batch_size=3, eval_freq=1, eval_iter=1,
                            max_steps=1))

    def judge_breaks(*args, **kwargs):
        raise UserError("http://localhost:11434/api/chat failed 4 times, last: HTTP 500")

    monkeypatch.setattr(evaluate_module, "check_server", lambda *args: None)
    monkeypatch.setattr(evaluate_module, "generate_model_scores", judge_breaks)
    report = evaluate(EvalConfig(checkpoint=str(run.run_dir), test=str(data / "test.json"), out=str(tmp_path / "eval"),
                                 base_model=False, grammalecte=False, judge=True))
    assert "HTTP 500" in report["judge"]["failed"]
    assert "HTTP 500" in (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))["model"] == report["model"]
