"""Edits as data (`edits`), text the corrector must not touch (`mask`), `Corrector.suggest`."""

from __future__ import annotations

import random
import re

import pytest
import torch
from test_correct import ByteTokenizer, ScriptedModel, scripted
from test_data import tiny_lexicon, word_count, write_corpus

from correcteur.augment import AugmentConfig
from correcteur.correct import Corrector, split_sentences
from correcteur.data import DataConfig, build_dataset
from correcteur.edits import Edit, apply, classify, edits_between, touches, utf16_index
from correcteur.errors import UserError
from correcteur.guard import Guard, GuardConfig
from correcteur.mask import covered, load_dictionary, protect, protected_spans
from correcteur.model import GPTModel

# --- edits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("removed, inserted, kind", [
    ("a", "à", "homophone"), ("sont", "son", "homophone"), ("ces", "ses", "homophone"),
    ("paris", "Paris", "majuscule"), ("ecole", "école", "accent"), ("oui ,", "oui,", "ponctuation"),
    ("enfant", "enfants", "accord"), ("grande", "grands", "accord"), ("manger", "mangé", "conjugaison"),
    ("projeg", "projet", "frappe"), ("enfnats", "enfants", "frappe"), ("Je", "Je ne", "manquant"),
    ("le le", "le", "superflu"), ("le chat", "un chien", "correction"),
])
def test_classify_names_the_kind_of_error(removed, inserted, kind):
    assert classify(removed, inserted) == kind


def test_edits_between_reads_offsets_and_messages():
    source = "Les enfant sont aller a l'école."
    edits = edits_between(source, "Les enfants sont allés à l'école.")
    assert [(e.offset, e.length, e.replacement, e.message) for e in edits] == [
        (4, 6, "enfants", "Accord en genre ou en nombre"),
        (16, 5, "allés", "Terminaison du verbe"),
        (22, 1, "à", "Confusion d'homophones"),
    ]
    assert all(e.source == "modèle" and e.confidence is None for e in edits)
    assert [source[e.offset:e.end] for e in edits] == ["enfant", "aller", "a"]


def test_an_insertion_takes_in_the_word_beside_it():
    (edit,) = edits_between("Je sais pas.", "Je ne sais pas.")
    assert edit.length > 0 and apply("Je sais pas.", [edit]) == "Je ne sais pas."
    (edit,) = edits_between("Fin", "Fin !")  # nothing after it: the word before
    assert (edit.offset, edit.length, edit.replacement) == (0, 3, "Fin !")
    (edit,) = edits_between("", "Bonjour.")  # nothing to take in
    assert (edit.offset, edit.length, edit.replacement) == (0, 0, "Bonjour.")
    # never a protected word: "Kubernetes" is the user's, the insertion takes "et" instead
    source = "et Kubernetes"
    (edit,) = edits_between(source, "et ne Kubernetes", protected=[(3, 13)])
    assert not touches(edit.offset, edit.end, [(3, 13)])
    assert apply(source, [edit]) == "et ne Kubernetes"


HAND_PAIRS = [
    ("Il a manger une pome 🍎 hier.\r\nElle est partit.\r\n", "Il a mangé une pomme 🍎 hier.\r\nElle est partie.\r\n"),
    ("👍🏽 bon travaille", "👍🏽 bon travail"),
    ("a b c", "x b y z"),
    ("texte", ""),
    ("", ""),
    ("  deux  espaces  ", " deux espaces "),
    ("Ligne\n\nligne", "Ligne\nligne."),
]


@pytest.mark.parametrize("source, corrected", HAND_PAIRS)
def test_applying_the_edits_gives_the_correction(source, corrected):
    edits = edits_between(source, corrected)
    assert apply(source, edits) == corrected
    assert apply(source, list(reversed(edits))) == corrected  # order does not matter
    assert (edits == []) == (source == corrected)


def test_apply_refuses_overlapping_or_outside_edits():
    with pytest.raises(ValueError, match="overlaps"):
        apply("abcdef", [Edit(0, 3, "x"), Edit(2, 2, "y")])
    with pytest.raises(ValueError, match="outside"):
        apply("abc", [Edit(2, 5, "x")])


def test_utf16_offsets_count_emoji_twice():
    text = "a🍎b👍🏽c é"
    to16 = utf16_index(text)
    assert [to16(i) for i in range(len(text) + 1)] == [len(text[:i].encode("utf-16-le")) // 2
                                                       for i in range(len(text) + 1)]
    assert to16(text.index("c")) == 8  # a, 🍎 (2), b, 👍 (2), 🏽 (2)


# --- masking -------------------------------------------------------------------------------

MIXED = ("Écris a jean.dupont@mail.fr avant 10h30 sur https://exemple.fr/Page, avec `git status` "
         "et Kubernetes.")


def test_protected_spans_find_urls_mails_code_numbers_and_dictionary_words():
    text = MIXED + "\n```python\nx = fonction(1)\n```\nVoir www.site.org. Il a 1\u00a0000 €."
    found = [text[s:e] for s, e in protected_spans(text, {"Kubernetes"})]
    assert found == ["jean.dupont@mail.fr", "10h30", "https://exemple.fr/Page", "`git status`", "Kubernetes",
                     "```python\nx = fonction(1)\n```", "www.site.org", "1\u00a0000"]
    assert "Kubernetes" not in [text[s:e] for s, e in protected_spans(text)]


def test_protect_undoes_only_the_edits_that_touch_a_span():
    source = "Il a 3 enfant sur https://x.fr/A."
    answer = "IL A TROIS ENFANTS SUR HTTPS://X.FR/A."
    assert protect(source, answer, protected_spans(source)) == "IL A 3 ENFANTS SUR https://x.fr/A."
    assert protect(source, answer, []) == answer
    # what changes is what counts: a suffix beside a number may change, the number may not grow
    assert protect("Le 3e jour", "Le 3è jour", [(3, 4)]) == "Le 3è jour"
    assert protect("à 10h30 pile", "à 10h300 pile", [(2, 7)]) == "à 10h30 pile"
    assert protect("Kubernetes est", "Kubernetess est", [(0, 10)]) == "Kubernetes est"
    assert covered("  `x`  ", [(2, 5)]) and not covered("a `x`", [(2, 5)])


def vandal(fixes: dict[str, str]):
    """A model's answer that fixes `fixes` and changes every other word too."""
    return lambda text: " ".join(fixes.get(word, word.swapcase()) for word in text.split(" "))


def test_a_model_that_changes_everything_never_touches_protected_text():
    text = MIXED + "\n```\nrm -rf build a\n```\nPuis ecrivez."
    pieces = [piece for piece, _ in split_sentences(text) if piece.strip()]
    answers = {piece: vandal({"a": "à", "ecrivez.": "écrivez."})(piece) for piece in pieces}
    corrector = scripted(answers)
    corrector.dictionary = frozenset({"Kubernetes"})
    corrected = corrector.correct(text)
    assert corrected == ("éCRIS à jean.dupont@mail.fr AVANT 10h30 SUR https://exemple.fr/Page, AVEC `git status` "
                         "ET Kubernetes.\n```\nrm -rf build a\n```\npUIS écrivez.")
    # the lines of the code block never reach the model
    assert [s for batch in corrector.model.batches for s in batch] == [pieces[0], pieces[-1]]
    edits = corrector.suggest(text)
    assert apply(text, edits) == corrected
    spans = protected_spans(text, corrector.dictionary)
    assert not any(touches(e.offset, e.end, spans) for e in edits)


def test_a_dictionary_file(tmp_path):
    path = tmp_path / "mots.txt"
    path.write_text("# mes mots\nKubernetes\n\n  Saint-Ouen  \nà la fois\n", encoding="utf-8")
    words = load_dictionary(path)
    assert words == {"Kubernetes", "Saint-Ouen", "à la fois"}
    text = "De Saint-Ouen, Kubernetesien et à la fois."
    assert [text[s:e] for s, e in protected_spans(text, words)] == ["Saint-Ouen", "à la fois"]
    path.write_bytes("Émile".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_dictionary(path)
    with pytest.raises(UserError, match="no such dictionary"):
        load_dictionary(tmp_path / "absent.txt")


# --- suggest: applying its edits gives correct(text) ----------------------------------------

def mutated(text: str, seed: int) -> str:
    """`text` with seeded slips: letters swapped, words dropped, added, capitalised, digits changed."""
    rng = random.Random(seed)
    words = []
    for word in text.split(" "):
        roll = rng.random()
        if roll < 0.15 and len(word) > 2:
            k = rng.randrange(len(word) - 1)
            word = word[:k] + word[k + 1] + word[k] + word[k + 2:]
        elif roll < 0.25:
            continue
        elif roll < 0.35:
            words.append("très")
        elif roll < 0.45:
            word = word.upper()
        words.append(re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), word) if rng.random() < 0.5 else word)
    return " ".join(words)


def mutating_corrector(texts: list[str], guarded: bool) -> Corrector:
    """A corrector whose model answers every piece of `texts` with seeded slips (`mutated`).
    Guarded, a random model's guard accepts everything but measures each edit's margin."""
    pieces = {piece for text in texts for piece, _ in split_sentences(text) if piece.strip()}
    guard = None
    if guarded:
        torch.manual_seed(0)
        cfg = {"vocab_size": 257, "context_length": 512, "emb_dim": 32, "n_layers": 2, "n_heads": 2,
               "drop_rate": 0.0, "qkv_bias": True}
        guard = Guard(GPTModel(cfg).eval(), ByteTokenizer(),
                      config=GuardConfig(max_edit_ratio=10.0, min_margin=-1e9, lexicon=False))
    return scripted({piece: mutated(piece, n) for n, piece in enumerate(sorted(pieces))}, guard=guard)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    config = DataConfig(corpus_dir=str(write_corpus(folder)), out=str(folder / "out"), seed=5,
                        augment=AugmentConfig(variants=3))
    built = build_dataset(config, count_tokens=word_count, lexicon=tiny_lexicon(), write=False)
    return [entry["input"] for entry in built.splits["test"]]


@pytest.mark.parametrize("guarded", [False, True])
def test_suggest_applied_is_correct_on_the_test_split(test_split, guarded):
    texts = test_split + [" ".join(test_split[:3]), "\r\n".join(test_split[3:5]) + "\r\n"]
    corrector = mutating_corrector(texts, guarded)
    changed = 0
    for text in texts:
        edits = corrector.suggest(text)
        assert apply(text, edits) == corrector.correct(text), text
        assert all(text[e.offset:e.end] != e.replacement for e in edits)
        assert all((e.confidence is not None) == guarded for e in edits)
        changed += bool(edits)
    assert changed >= 0.8 * len(texts)  # slips are kept in most texts: the property is tested


@pytest.mark.parametrize("text", [
    "Il a manger 🍎 une pome.\r\nElle est partit à 10h30.\r\n",
    "👍🏽 Bon travaille ! Voir https://exemple.fr.\n\n\n  Fin.  ",
    "Sans erreur.",
])
def test_suggest_applied_is_correct_on_hand_made_texts(text):
    fixes = {"manger": "mangé", "pome.": "pomme.", "partit": "partie", "travaille": "travail"}
    pieces = [piece for piece, _ in split_sentences(text) if piece.strip()]
    corrector = scripted({piece: vandal(fixes)(piece) for piece in pieces})
    edits = corrector.suggest(text)
    assert apply(text, edits) == corrector.correct(text)
    to16 = utf16_index(text)
    for edit in edits:  # the UTF-16 span holds the same text as the character span
        start, end = to16(edit.offset), to16(edit.end)
        assert text.encode("utf-16-le")[2 * start:2 * end].decode("utf-16-le") == text[edit.offset:edit.end]


class CountingGuard:
    """A guard that keeps every answer and scores a text by its number of "é"."""

    def __call__(self, source: str, candidate: str) -> str:
        return candidate

    def log_probs(self, source: str, responses: list[str]) -> list[float]:
        return [float(r.count("é")) for r in responses]


def test_each_edit_carries_the_guards_margin_for_it_alone():
    corrector = Corrector(ScriptedModel({"Il a manger a midi.": "Il a mangé à midi."}), ByteTokenizer(),
                          device="cpu", guard=CountingGuard())
    edits = corrector.suggest("Il a manger a midi.")
    assert [(e.replacement, e.confidence) for e in edits] == [("mangé", 1.0), ("à", 0.0)]
