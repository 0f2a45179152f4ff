"""`correct --file` (paragraph by paragraph, in place, to --output, from stdin), `--json`, `--dictionary`."""

from __future__ import annotations

import io
import json
import sys

import pytest
from test_correct import Corrector, ScriptedModel, scripted

from correcteur.cli import main
from correcteur.correct import split_sentences
from correcteur.edits import Edit, apply
from correcteur.errors import UserError
from correcteur.textfiles import check_text_file, lines_of, paragraphs

FIXES = {"Il a manger.": "Il a mangé.", "On va a Paris.": "On va à Paris.", "Voir `a` et 10 a.": "Voir `à` et 11 à."}
DOCUMENT = ("Il a manger.\r\n\r\nOn va a Paris. Il a manger.\n\n```\nIl a manger.\n\nOn va a Paris.\n```\n"
            "Voir `a` et 10 a.\n")
CORRECTED = ("Il a mangé.\r\n\r\nOn va à Paris. Il a mangé.\n\n```\nIl a manger.\n\nOn va a Paris.\n```\n"
             "Voir `a` et 10 à.\n")


@pytest.fixture
def corrector(monkeypatch):
    """`Corrector.from_checkpoint` gives a scripted corrector, recorded with its dictionary."""
    made = scripted(dict(FIXES))

    def from_checkpoint(cls, path, device=None, guard=True, **options):
        return made

    monkeypatch.setattr(Corrector, "from_checkpoint", classmethod(from_checkpoint))
    return made


def test_paragraphs_keep_every_character_and_never_cut_a_code_block():
    chunks = list(paragraphs(lines_of(DOCUMENT)))
    assert "".join(chunks) == DOCUMENT
    assert "```\nIl a manger.\n\nOn va a Paris.\n```\n" in "".join(c for c in chunks if "```" in c)
    assert sum("```" in c for c in chunks) == 1
    assert list(paragraphs([])) == [] and "".join(paragraphs(lines_of("a\n\n\nb"))) == "a\n\n\nb"


def test_a_file_is_corrected_paragraph_by_paragraph_as_the_whole_text(tmp_path, corrector, capsys):
    path = tmp_path / "doc.md"
    path.write_bytes(DOCUMENT.encode("utf-8"))
    assert main(["correct", "--checkpoint", "run", "--file", str(path)]) == 0
    assert capsys.readouterr().out == CORRECTED == corrector.correct(DOCUMENT)
    assert path.read_bytes() == DOCUMENT.encode("utf-8")  # printed, not rewritten
    # the code block never reached the model
    assert all("```" not in s for batch in corrector.model.batches for s in batch)


def test_in_place_with_a_backup_and_output(tmp_path, corrector, capsys):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(DOCUMENT, encoding="utf-8", newline="")
    second.write_text("On va a Paris.", encoding="utf-8")
    assert main(["correct", "--checkpoint", "run", "--file", str(first), str(second), "--in-place", "--backup"]) == 0
    assert first.read_bytes() == CORRECTED.encode("utf-8") and second.read_text(encoding="utf-8") == "On va à Paris."
    assert (tmp_path / "a.txt.bak").read_bytes() == DOCUMENT.encode("utf-8")
    assert capsys.readouterr().out == ""
    out = tmp_path / "out" / "fixed.txt"
    assert main(["correct", "--checkpoint", "run", "--file", str(tmp_path / "a.txt.bak"), "--output", str(out)]) == 0
    assert out.read_bytes() == CORRECTED.encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "a.txt.bak", "b.txt", "b.txt.bak", "out"]


def test_a_failure_leaves_the_file_as_it_was(tmp_path, capsys, monkeypatch):
    class Failing(ScriptedModel):
        def forward(self, *args, **kwargs):
            if len(self.batches) >= 1:
                raise UserError("the model stopped")
            return super().forward(*args, **kwargs)

    made = Corrector(Failing(FIXES), scripted(FIXES).tokenizer, device="cpu")
    monkeypatch.setattr(Corrector, "from_checkpoint", classmethod(lambda cls, path, device=None, guard=True, **options: made))
    path = tmp_path / "a.txt"
    path.write_text(DOCUMENT, encoding="utf-8", newline="")
    assert main(["correct", "--checkpoint", "run", "--file", str(path), "--in-place"]) == 2
    assert "the model stopped" in capsys.readouterr().err
    assert path.read_bytes() == DOCUMENT.encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


def test_standard_input_as_a_file_and_json_edits(tmp_path, corrector, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"On va a Paris.\n\nIl a manger.\n")))
    path = tmp_path / "a.txt"
    path.write_text("Il a manger.", encoding="utf-8")
    assert main(["correct", "--checkpoint", "run", "--file", "-", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [entry["file"] for entry in report] == ["-", str(path)]
    stdin_edits = [Edit(**e) for e in report[0]["edits"]]
    assert apply("On va a Paris.\n\nIl a manger.\n", stdin_edits) == "On va à Paris.\n\nIl a mangé.\n"
    assert [(e.offset, e.length, e.replacement, e.source) for e in stdin_edits] == [
        (6, 1, "à", "modèle"), (21, 6, "mangé", "modèle")]  # offsets from the start of the input
    assert report[0]["edits"][0]["message"] == "Confusion d'homophones"


def test_json_of_a_text_argument(corrector, capsys):
    assert main(["correct", "--checkpoint", "run", "--json", "On va a Paris."]) == 0
    (edit,) = json.loads(capsys.readouterr().out)
    assert edit == {"offset": 6, "length": 1, "replacement": "à", "source": "modèle", "confidence": None,
                    "message": "Confusion d'homophones", "kind": "homophone"}


def test_the_dictionary_reaches_the_corrector(tmp_path, corrector, capsys):
    words = tmp_path / "mots.txt"
    words.write_text("Paris\n", encoding="utf-8")
    corrector.model.answers["On va a Paris."] = "On va à Parie."
    assert main(["correct", "--checkpoint", "run", "--dictionary", str(words), "On va a Paris."]) == 0
    assert capsys.readouterr().out == "On va à Paris.\n"
    assert corrector.dictionary == {"Paris"}


def test_check_text_file_refuses_binary_and_other_encodings(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("é" * 10, encoding="utf-8")
    assert check_text_file(good) == 20
    cases = {"latin.txt": ("Il a mangé".encode("latin-1"), "not UTF-8 text (invalid byte at offset 9)"),
             "image.png": (b"\x89PNG\r\n\x1a\n\x00\x00", "binary data (a NUL byte at offset 8)"),
             "cut.txt": ("é".encode()[:1], "not UTF-8 text")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_text_file(tmp_path / name)


def test_long_files_are_read_in_paragraphs(tmp_path, corrector, capsys):
    """A file of a few thousand paragraphs: the output is the whole text corrected, and the
    model saw each sentence (no paragraph was joined to the next)."""
    document = "Il a manger.\n\nOn va a Paris.\n\n" * 1500
    path = tmp_path / "long.txt"
    path.write_text(document, encoding="utf-8")
    assert main(["correct", "--checkpoint", "run", "--file", str(path)]) == 0
    assert capsys.readouterr().out == document.replace("manger", "mangé").replace("va a", "va à")
    assert sum(len(batch) for batch in corrector.model.batches) == 3000
    assert len({p for p, _ in split_sentences(document) if p}) == 2
