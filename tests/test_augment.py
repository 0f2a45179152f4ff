"""Each error operation on hand-made sentences: exact outputs where only one is possible,
the operation's defining property over many seeds otherwise."""

import random

import pytest

from correcteur.augment import (
    ACCENT_SWAPS,
    NEIGHBOURS,
    AugmentConfig,
    accent,
    agreement,
    augment_sentence,
    concatenation,
    corrupt,
    deletion,
    french_lexicon,
    homophone,
    insertion,
    match_case,
    split,
    substitution,
    tense,
    transposition,
    verb_ending,
)

NO_WORDS = frozenset()
SEEDS = range(40)


def outcomes(op, text, lexicon=NO_WORDS):
    return {op(text, random.Random(seed), lexicon) for seed in SEEDS}


def test_azerty_neighbours_are_symmetric_and_local():
    assert set(NEIGHBOURS["a"]) == {"z", "q"}
    assert set(NEIGHBOURS["m"]) == {"l", "p"}
    assert all(a in NEIGHBOURS[b] for a in NEIGHBOURS for b in NEIGHBOURS[a])


def test_match_case():
    assert match_case("Où", "à") == "À"
    assert match_case("ET", "est") == "EST"
    assert match_case("la", "là") == "là"


def test_insertion_adds_a_neighbouring_or_doubled_key():
    for result in outcomes(insertion, "Bonjour"):
        assert len(result) == len("Bonjour") + 1
        i = next(i for i in range(len(result)) if result[:i] + result[i + 1:] == "Bonjour")
        near = {c.lower() for c in result[max(i - 1, 0):i] + result[i + 1:i + 2]}
        assert any(result[i] == c or result[i] in NEIGHBOURS[c] for c in near)


def test_deletion_removes_one_letter_of_a_word():
    results = outcomes(deletion, "Un chat")
    assert results <= {"Un hat", "Un cat", "Un cht", "Un cha"}  # "Un" is too short to touch
    assert len(results) > 1


def test_substitution_uses_a_keyboard_neighbour():
    for result in outcomes(substitution, "maison"):
        diffs = [(a, b) for a, b in zip("maison", result, strict=True) if a != b]
        assert len(diffs) == 1 and diffs[0][1] in NEIGHBOURS[diffs[0][0]]


def test_transposition_swaps_two_neighbouring_letters():
    assert outcomes(transposition, "Oui") == {"uOi", "Oiu"}


def test_concatenation_and_split():
    assert outcomes(concatenation, "Salut toi, ça va ?") == {"Saluttoi, ça va ?", "Salut toi, çava ?"}
    assert concatenation("Bonjour", random.Random(0), NO_WORDS) is None
    assert outcomes(split, "Un rendez-vous") == {"Un ren dez-vous", "Un re ndez-vous", "Un rend ez-vous"}


def test_accent_changes_only_accented_letters():
    text = "Ça a été très sûr, à Noël, où tu es allé."
    for result in outcomes(accent, text):
        changed = [(a, b) for a, b in zip(text, result, strict=True) if a != b]
        assert len(changed) == 1
        before, after = changed[0]
        assert after.lower() in ACCENT_SWAPS[before.lower()]
    assert accent("Bonjour tout le monde", random.Random(0), NO_WORDS) is None


def test_homophone_swaps_whole_words_within_their_group():
    assert outcomes(homophone, "Il est là.") == {"Il et là.", "Il est la."}
    assert outcomes(homophone, "C'est bon.") == {"Ces bon.", "Ses bon.", "S'est bon."}
    assert homophone("Parisienne", random.Random(0), NO_WORDS) is None  # "a" inside a word


def test_agreement_needs_a_real_word_and_skips_invariable_words():
    assert agreement("Les enfants jouent.", random.Random(0), frozenset({"enfant"})) == "Les enfant jouent."
    assert agreement("Ils jouent.", random.Random(0), frozenset({"joue"})) == "Ils joue."
    assert agreement("Elle est partie.", random.Random(0), frozenset({"parti"})) == "Elle est parti."
    assert agreement("Mais non.", random.Random(0), frozenset({"mai"})) is None
    assert agreement("Les enfants.", random.Random(0), NO_WORDS) is None


def test_verb_ending_confuses_er_e_ez_ait():
    assert verb_ending("J'ai mangé.", random.Random(0), frozenset({"manger"})) == "J'ai manger."
    assert verb_ending("Il mangeait.", random.Random(0), frozenset({"manger"})) == "Il manger."
    assert verb_ending("Il faut manger.", random.Random(0), frozenset({"mangeait"})) == "Il faut mangeait."
    assert verb_ending("C'est fait.", random.Random(0), frozenset({"fez", "fer"})) is None


def test_tense_rules():
    rng = random.Random(0)
    assert tense("Il faut que tu viennes.", rng, NO_WORDS) == "Il faut que tu viens."
    assert tense("Qu'il soit là.", rng, NO_WORDS) == "Qu'il est là."
    assert tense("Il faut que nous parlions.", rng, frozenset({"parlons"})) == "Il faut que nous parlons."
    assert tense("Si j'avais su.", rng, frozenset({"aurais"})) == "Si j'aurais su."
    assert tense("Si tu mangeais ici.", rng, frozenset({"mangerais"})) == "Si tu mangerais ici."
    assert tense("Je viendrai demain.", rng, frozenset({"viendrais"})) == "Je viendrais demain."
    assert tense("Tu viens demain.", rng, frozenset({"viendrais"})) is None


def test_corrupt_records_the_operations_that_applied():
    text, ops = corrupt("Salut toi", 3, random.Random(0), NO_WORDS, {"concatenation": 1.0})
    assert (text, ops) == ("Saluttoi", ["concatenation"])  # no second space to remove
    text, ops = corrupt("Il est là et il a fini.", 2, random.Random(1), NO_WORDS, {"homophone": 1.0})
    assert ops == ["homophone", "homophone"] and text != "Il est là et il a fini."


def test_augment_sentence_is_seeded_distinct_and_labelled():
    lexicon = french_lexicon()
    config = AugmentConfig(variants=4)
    sentence = "Les enfants sont rentrés de l'école à cinq heures."
    first = augment_sentence(sentence, config, random.Random(7), lexicon)
    assert first == augment_sentence(sentence, config, random.Random(7), lexicon)
    assert first != augment_sentence(sentence, config, random.Random(8), lexicon)
    inputs = [text for text, _ in first]
    assert len(set(inputs)) == len(inputs)
    for text, ops in first:
        assert (text == sentence) == (ops == [])
        assert 0 <= len(ops) <= config.max_errors


@pytest.mark.parametrize("share", [0.0, 0.3])
def test_clean_share_is_respected_on_average(share):
    config = AugmentConfig(variants=3, clean_share=share)
    rng = random.Random(0)
    pairs = [p for i in range(300) for p in augment_sentence(f"Il est là et elle a fini le numéro {i}.",
                                                             config, rng, NO_WORDS)]
    clean = sum(ops == [] for _, ops in pairs) / len(pairs)
    assert abs(clean - share) < 0.05


def test_config_rejects_unknown_operations_and_bad_rates():
    with pytest.raises(ValueError, match="unknown operations"):
        AugmentConfig(weights={"typo": 1.0})
    with pytest.raises(ValueError):
        AugmentConfig(clean_share=1.0)
    with pytest.raises(ValueError):
        AugmentConfig(min_errors=3, max_errors=2)
