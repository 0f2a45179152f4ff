"""The corrector: sentence splitting, batched guarded generation, word diffs, the `correct` command."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from correcteur import correct
from correcteur.cli import main
from correcteur.correct import Corrector, split_sentences
from correcteur.errors import UserError
from correcteur.guard import Guard, GuardConfig, save_guard_config
from correcteur.model import GPTModel
from correcteur.textdiff import diff_words, format_diff

EOT = 256


class ByteTokenizer:
    """tiktoken's interface with one token per UTF-8 byte and 256 as end-of-text."""

    eot_token = EOT
    n_vocab = 257
    name = "bytes"

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class ScriptedModel(torch.nn.Module):
    """The model interface, answering greedily `answers[source]` then end-of-text for the
    prompt that contains `source`. It never looks at the prompt format, so it works with
    whatever `build_prompt` writes, and it records every batch it is given."""

    def __init__(self, answers: dict[str, str], context_length: int = 512):
        super().__init__()
        self.answers = answers
        self.cfg = {"vocab_size": 257, "context_length": context_length}
        self.anchor = torch.nn.Parameter(torch.zeros(3))  # something for .to() and the count
        self.batches: list[list[str]] = []

    @property
    def context_length(self) -> int:
        return self.cfg["context_length"]

    def new_cache(self) -> dict:
        return {"scripts": None, "step": 0}

    def forward(self, in_idx, cache=None, attention_mask=None, only_last=False):
        if cache["scripts"] is None:
            sources = [self._source(row, mask) for row, mask in zip(in_idx.tolist(), attention_mask.tolist(), strict=True)]
            self.batches.append(sources)
            cache["scripts"] = [list(self.answers[s].encode("utf-8")) + [EOT] for s in sources]
        step = cache["step"]
        cache["step"] += 1
        logits = torch.full((in_idx.shape[0], 1, 257), -1e4)
        for row, script in enumerate(cache["scripts"]):
            logits[row, 0, script[min(step, len(script) - 1)]] = 0.0
        return logits

    def _source(self, ids: list[int], mask: list[int]) -> str:
        prompt = ByteTokenizer().decode([i for i, m in zip(ids, mask, strict=True) if m])
        return max((s for s in self.answers if s in prompt), key=len)


def scripted(answers: dict[str, str], **kwargs) -> Corrector:
    return Corrector(ScriptedModel(answers), ByteTokenizer(), device="cpu", name="script", **kwargs)


def bound(text: str) -> int:
    return int(1.5 * len(text.encode("utf-8"))) + 8


# --- sentences ----------------------------------------------------------------------------

TRICKY = ("  M. Dupont est arrivé...  Il pleut ?! Oui.\r\n\r\n"
          "Tu viens\u00a0? J. Martin, lui,   reste.\n\n\n   Fin du texte. \n")


def test_split_sentences_keeps_every_character():
    for text in [TRICKY, "", "   ", "\n", "Un mot", "Deux phrases. Voilà.", "a\r\nb\rc"]:
        assert "".join(p + s for p, s in split_sentences(text)) == text


def test_split_sentences_cuts_at_sentence_ends_and_lines_only():
    assert split_sentences(TRICKY) == [
        ("", "  "),
        ("M. Dupont est arrivé...", "  "),
        ("Il pleut ?!", " "),
        ("Oui.", "\r\n\r\n"),
        ("Tu viens\u00a0?", " "),
        ("J. Martin, lui,   reste.", "\n\n\n   "),
        ("Fin du texte.", " \n"),
    ]
    assert split_sentences("a\r\nb\rc") == [("a", "\r\n"), ("b", "\r"), ("c", "")]


# --- word diffs ---------------------------------------------------------------------------

def test_diff_words_marks_changed_words():
    runs = diff_words("Les enfant sont aller a l'école.", "Les enfants sont allés à l'école.")
    assert runs == [
        ("equal", "Les "), ("delete", "enfant"), ("insert", "enfants"), ("equal", " sont "),
        ("delete", "aller"), ("insert", "allés"), ("equal", " "), ("delete", "a"), ("insert", "à"),
        ("equal", " l'école."),
    ]
    assert format_diff(runs) == "Les [-enfant-]{+enfants+} sont [-aller-]{+allés+} [-a-]{+à+} l'école."


@pytest.mark.parametrize("source, corrected", [
    ("Il a manger  une pome.\n", "Il a mangé une pomme.\n"),
    ("", "Bonjour."),
    ("Rien à voir.", ""),
    ("Même texte.", "Même texte."),
])
def test_diff_words_rebuilds_both_texts(source, corrected):
    runs = diff_words(source, corrected)
    assert "".join(t for tag, t in runs if tag != "insert") == source
    assert "".join(t for tag, t in runs if tag != "delete") == corrected


# --- the corrector ------------------------------------------------------------------------

def test_correct_reassembles_with_original_spacing():
    answers = {
        "M. Dupont est arrivé...": "M. Dupont est arrivé…",
        "Il pleut ?!": "Il pleut ?!",
        "Oui.": "Oui.",
        "Tu viens\u00a0?": "Tu viens\u00a0?",
        "J. Martin, lui,   reste.": "J. Martin, lui, reste.",
        "Fin du texte.": "Fin du texte !",
    }
    corrector = scripted(answers, batch_size=4)
    expected = TRICKY.replace("arrivé...", "arrivé…").replace("lui,   reste", "lui, reste").replace(
        "texte.", "texte !")
    assert corrector.correct(TRICKY) == expected
    # six sentences, blank pieces never sent, batches of at most four, order kept
    assert corrector.model.batches == [list(answers)[:4], list(answers)[4:]]


def test_correct_batch_cuts_each_row_at_its_own_budget():
    short, long = "Un chat.", "Le chien du voisin aboie toute la nuit sans jamais se taire."
    runaway = "bla " * 200  # never ends on its own
    corrector = scripted({short: runaway, long: runaway})
    out = corrector.correct_batch([short, "   ", long])
    assert out[1] == "   "
    assert [len(out[0].encode()), len(out[2].encode())] == pytest.approx(
        [bound(short), bound(long)], abs=2)  # extract_response may strip a trailing space


def test_any_special_token_ends_an_answer():
    class ChatTokenizer(ByteTokenizer):
        special_ids = frozenset({EOT, 0})  # byte 0 plays a chat model's <|im_end|>

    corrector = Corrector(ScriptedModel({"Il a manger.": "Il a mangé.\x00<|im_start|>assistant"}), ChatTokenizer(),
                          device="cpu", name="chat")
    assert corrector.correct_batch(["Il a manger."]) == ["Il a mangé."]


def test_correct_batch_with_a_random_gpt_model_respects_the_bound():
    torch.manual_seed(0)
    cfg = {"vocab_size": 257, "context_length": 512, "emb_dim": 32, "n_layers": 2, "n_heads": 2,
           "drop_rate": 0.0, "qkv_bias": True}
    corrector = Corrector(GPTModel(cfg), ByteTokenizer(), device="cpu", name="tiny")
    texts = ["Il a manger.", "Je suis aller au marché ce matin avec ma sœur.", ""]
    out = corrector.correct_batch(texts)
    assert len(out) == 3 and out[2] == ""
    for text, answer in zip(texts[:2], out[:2], strict=True):
        assert isinstance(answer, str) and len(answer) <= bound(text)
    assert corrector.description.startswith("tiny · 0.") and corrector.description.endswith(" cpu")
    without_cache = Corrector(corrector.model, ByteTokenizer(), device="cpu", use_cache=False)
    assert without_cache.correct_batch(texts) == out


def test_guard_sees_each_piece_and_decides():
    calls = []

    def guard(source: str, candidate: str) -> str:
        calls.append((source, candidate))
        return source if "!" in candidate else candidate

    corrector = scripted({"Il a manger.": "Il a mangé.", "Quel joie.": "Quelle joie !!!"}, guard=guard)
    assert corrector.correct("Il a manger. Quel joie.") == "Il a mangé. Quel joie."
    assert calls == [("Il a manger.", "Il a mangé."), ("Quel joie.", "Quelle joie !!!")]


@pytest.mark.parametrize("guard", [True, False])
def test_from_checkpoint_reads_the_run_and_its_tuned_guard(monkeypatch, tmp_path, guard):
    model = ScriptedModel({"Il a manger.": "Il a mangé."})
    meta = {"prompt_style": "short", "model_name": "tiny-run"}
    monkeypatch.setattr(correct, "load_for_inference", lambda path: (model, ByteTokenizer(), meta))
    save_guard_config(GuardConfig(max_edit_ratio=0.5, lexicon=False), tmp_path)
    corrector = Corrector.from_checkpoint(tmp_path, device="cpu", guard=guard)
    assert (corrector.prompt_style, corrector.name, corrector.model) == ("short", "tiny-run", model)
    assert corrector.description == "tiny-run · 0.0 M paramètres · cpu"
    if guard:
        assert isinstance(corrector.guard, Guard) and corrector.guard.config.max_edit_ratio == 0.5
    else:
        assert corrector.guard is None


def context_for(corrector: Corrector, longest: str) -> int:
    """The smallest context in which `longest` fits, with its prompt and answer budget."""
    return len(corrector._encode(longest).prompt_ids) + bound(longest)


def test_a_sentence_too_long_for_the_context_is_cut_after_its_commas():
    clauses = ["Hier soir, ", "les enfant sont rentrer tard; ", "leurs parent les attendait: ", "rien de grave."]
    fixes = {c.strip(): c.strip().upper() for c in clauses} | {"Court.": "COURT."}
    corrector = scripted(fixes)
    corrector.model.cfg["context_length"] = context_for(corrector, clauses[1].strip())
    text = "".join(clauses) + "\n"
    assert corrector.correct(text) == "".join(c.strip().upper() + c[len(c.strip()):] for c in clauses) + "\n"
    # The short first clause shares its piece with nothing: joined to the next, it would not fit.
    assert [s for batch in corrector.model.batches for s in batch] == [c.strip() for c in clauses]
    # Evaluation passes whole sentences to correct_batch: it cuts them the same way.
    assert corrector.correct_batch([text.strip(), "Court."]) == [corrector.correct(text).strip(), "COURT."]


def test_a_clause_too_long_is_cut_between_words_and_a_giant_word_is_refused():
    text = "un deux trois quatre cinq six sept huit neuf dix onze douze."
    corrector = scripted({})
    corrector.model.cfg["context_length"] = context_for(corrector, "quatre cinq")
    pieces = [s for piece, separator in split_sentences(text) for s, _ in corrector._fit(piece, separator)]
    assert " ".join(pieces) == text and len(pieces) > 3
    assert all(corrector._fits(p) for p in pieces)
    with pytest.raises(UserError, match="too long"):
        corrector.correct("Court. " + "x" * 400 + "\n")
    assert corrector.model.batches == []  # refused before any generation


# --- the command line ---------------------------------------------------------------------

@pytest.fixture
def fake_checkpoint(monkeypatch):
    """`Corrector.from_checkpoint` returns a scripted corrector; records the guard flag."""
    corrector = scripted({"Il a manger.": "Il a mangé.", "On va a Paris.": "On va à Paris."})
    seen = {}

    def from_checkpoint(cls, path, device=None, guard=True, **options):
        seen.update(path=path, guard=guard, **options)
        return corrector

    monkeypatch.setattr(Corrector, "from_checkpoint", classmethod(from_checkpoint))
    return seen


def set_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_cli_corrects_stdin_line_by_line(monkeypatch, capsys, fake_checkpoint):
    set_stdin(monkeypatch, b"On va a Paris.\n\nIl a manger.\n")
    assert main(["correct", "--checkpoint", "run", "--no-guard"]) == 0
    assert capsys.readouterr().out == "On va à Paris.\n\nIl a mangé.\n"
    assert fake_checkpoint == {"path": "run", "guard": False, "decoding": "speculative", "precision": "float32",
                               "chooser": True}


def test_cli_diff_of_an_argument(capsys, fake_checkpoint):
    assert main(["correct", "--checkpoint", "run", "--diff", "Il a manger."]) == 0
    assert capsys.readouterr().out == "Il a [-manger.-]{+mangé.+}\n"
    assert fake_checkpoint["guard"] is True
    assert main(["correct", "--checkpoint", "run", "--decoding", "greedy", "--precision", "bfloat16", "Il a manger."]) == 0
    assert (fake_checkpoint["decoding"], fake_checkpoint["precision"]) == ("greedy", "bfloat16")


@pytest.mark.parametrize("argv, stdin, message", [
    (["  \n "], None, "the text is empty"),
    ([], b"Il a manger.\x00\x01\x02", "binary data"),
    ([], "Il a mangé".encode("latin-1"), "not UTF-8"),
    ([], b"", "the text is empty"),
    (["Il a manger. " + "motsanslimite" * 60], None, "too long"),
])
def test_cli_refuses_bad_input(monkeypatch, capsys, fake_checkpoint, argv, stdin, message):
    if stdin is not None:
        set_stdin(monkeypatch, stdin)
    assert main(["correct", "--checkpoint", "run", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_special_token_in_text_is_a_user_error():
    class StrictTokenizer(ByteTokenizer):
        def encode(self, text, allowed_special=frozenset()):
            if "<|endoftext|>" in text:
                raise ValueError("Encountered text corresponding to disallowed special token")
            return super().encode(text)

    corrector = Corrector(ScriptedModel({"Fin.": "Fin."}), StrictTokenizer(), device="cpu")
    with pytest.raises(UserError, match="disallowed special token"):
        corrector.correct("Fin. <|endoftext|>")


def test_cli_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["correct", "--checkpoint", str(missing), "Il a manger."]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint at {missing}" in err and "python -m correcteur train" in err


def test_the_training_input_prefix_is_put_back_in_the_prompt():
    """A model trained on "grammaire: ..." inputs is asked the same way when correcting."""
    corrector = scripted({"Il a manger.": "Il a mangé."}, input_prefix="grammaire: ")
    assert "\ngrammaire: Il a manger." in corrector._encode("Il a manger.").prompt
    assert corrector.correct("Il a manger.") == "Il a mangé."
