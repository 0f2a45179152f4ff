"""Rules and lexicon propose, the model disposes: candidates, scorers, the chooser, its tuning,
and (input, target) files for evaluation."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from correcteur.candidates import (
    Candidate,
    accent_variants,
    candidates,
    compound_candidates,
    elision_candidates,
    frequency_shift,
    grammalecte_candidates,
    grammalecte_checker,
    lexicon_neighbours,
    model_candidates,
    word_candidates,
    word_frequencies,
)
from correcteur.choose import (
    Chooser,
    ChooserConfig,
    Weighing,
    apply_candidates,
    choose,
    clusters,
    load_chooser_config,
    proposals,
    save_chooser_config,
)
from correcteur.choose_tuning import (
    EVERYDAY_ERRORS,
    FREQUENCY_GRID,
    LEAD_GRID,
    MARGIN_GRID,
    Replay,
    nearby,
    objective,
    save_weighings,
    tune_chooser,
)
from correcteur.data import load_embedded
from correcteur.errors import UserError
from correcteur.files import load_entries
from correcteur.model import GPTModel
from correcteur.scoring import (
    HFSentenceScorer,
    changed_span,
    continuation_log_probs,
)
from tests.conftest import TINY_GPT_CONFIG
from tests.test_llama import tiny_llama

needs_grammalecte = pytest.mark.skipif(grammalecte_checker() is None, reason="Grammalecte is not installed")


def spans(text: str, found: list[Candidate]) -> set[tuple[str, str, str]]:
    return {(text[c.start:c.end], c.replacement, c.source) for c in found}


# --- candidates ---------------------------------------------------------------------------

def test_word_candidates_of_a_hand_made_sentence():
    text = "Les enfant vont a l'écolle."
    found = spans(text, word_candidates(text))
    assert ("a", "à", "accent") in found
    assert ("écolle", "école", "lexicon") in found
    assert ("enfant", "enfants", "variant") in found
    # the elided article is no word of its own, and a known word gets no lexicon neighbours
    assert not any(removed in ("l", "Les", "vont") and source == "lexicon" for removed, _, source in found)


def test_confusion_sets_cover_elided_forms():
    text = "Ces un ami, il s'en va."
    found = spans(text, word_candidates(text))
    assert {("Ces", "C'est", "homophone"), ("Ces", "Ses", "homophone"), ("s'en", "sans", "homophone")} <= found


def test_lexicon_neighbours_are_one_typo_away_and_ranked_by_frequency():
    assert lexicon_neighbours("maisno")[0] == "maison"  # two neighbours swapped
    near = lexicon_neighbours("Chein")
    assert "Chien" in near and all(w[0].isupper() for w in near)  # the capital kept
    variants = accent_variants("peche")
    assert {"pêche", "péché"} <= set(variants) and "peche" not in variants
    assert accent_variants("xyz") == []


def test_elision_candidates():
    text = "Je aime le arbre de Anne."
    assert spans(text, elision_candidates(text)) == {("Je ", "J'", "elision"), ("le ", "l'", "elision"),
                                                     ("de ", "d'", "elision")}


def test_compound_candidates_join_known_compounds_and_split_unknown_words():
    text = "Mes grands parents viendront après demain, c'est à dire depuis long temps avecune amie."
    assert spans(text, compound_candidates(text)) == {
        ("grands parents", "grands-parents", "compound"), ("après demain", "après-demain", "compound"),
        ("c'est à dire", "c'est-à-dire", "compound"), ("long temps", "longtemps", "compound"),
        ("avecune", "avec une", "compound")}
    assert compound_candidates("Peut être demain.")[0].replacement == "Peut-être"  # the case kept
    # words apart by more than one space, or a comma, are not a compound; nor is a name cut up,
    # nor the stem of an elided word
    assert compound_candidates("après  demain, peut, être chez Martinbrun") == []
    assert compound_candidates("Quelqu'un viendra jusqu'à lorsqu'elle partira.") == []


def test_model_candidates_are_the_changed_stretches_with_offsets():
    source, answer = "Il a manger une pome.", "Il a mangé une pomme."
    found = model_candidates(source, answer)
    assert [(source[c.start:c.end], c.replacement) for c in found] == [("manger", "mangé"), ("pome.", "pomme.")]
    assert apply_candidates(source, found) == answer


@needs_grammalecte
def test_every_grammalecte_suggestion_is_a_candidate():
    text = "Nous devons rendre conte de nos dépenses et ils est aller."
    found = spans(text, grammalecte_candidates(text))
    assert ("conte", "compte", "grammar") in found
    assert {("aller", "allé", "grammar"), ("aller", "allée", "grammar")} & found


def test_candidates_are_unique_and_never_the_text_itself():
    text = "Il a manger a la maison."
    found = candidates(text, "Il a mangé à la maison.")
    keys = [(c.start, c.end, c.replacement) for c in found]
    assert len(keys) == len(set(keys))
    assert all(text[c.start:c.end] != c.replacement for c in found)
    assert not candidates(text, sources=())


# --- scorers ------------------------------------------------------------------------------

def full_log_prob(model, prefix: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([prefix + continuation])
    logits = model(ids[:, :-1]).float()
    log_probs = torch.log_softmax(logits, dim=-1)[0, len(prefix) - 1:]
    return log_probs.gather(1, torch.tensor(continuation)[:, None]).sum().item()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_shared_prompt_scores_equal_one_forward_per_text(kind):
    torch.manual_seed(0)
    model = GPTModel(TINY_GPT_CONFIG).eval() if kind == "gpt2" else tiny_llama()
    vocab = 90
    prefix = torch.randint(0, vocab, (11,)).tolist()
    rows = [torch.randint(0, vocab, (n,)).tolist() for n in (1, 5, 3, 8)]
    with torch.no_grad():
        expected = [full_log_prob(model, prefix, row) for row in rows]
    assert continuation_log_probs(model, prefix, rows) == pytest.approx(expected, abs=1e-4)


def test_a_prompt_too_long_loses_its_start_and_a_row_too_long_is_refused():
    model = tiny_llama()  # a context of 64 tokens
    prefix, row = list(range(60)), list(range(10))
    with torch.no_grad():
        assert continuation_log_probs(model, prefix, [row]) == pytest.approx(
            [full_log_prob(model, prefix[6:], row)], abs=1e-4)
    with pytest.raises(ValueError, match="no room"):
        continuation_log_probs(model, prefix, [list(range(64))])


def test_changed_span():
    assert changed_span([1, 2, 3, 4, 5], [1, 2, 9, 4, 5], None) == ((2, 5), (2, 5))
    assert changed_span([1, 2, 3, 4, 5], [1, 2, 9, 4, 5], 1) == ((2, 4), (2, 4))
    assert changed_span([1, 2, 3, 4, 5], [1, 2, 9, 9, 3, 4, 5], 0) == ((2, 2), (2, 4))
    assert changed_span([1, 2], [1, 2], 3) == ((2, 2), (2, 2))


class IdTokenizer:
    """Characters as token ids, for a Hugging Face model of a tiny vocabulary."""

    bos_token_id = 1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [2 + (ord(c) % 60) for c in text]


def whole_row_scores(model, tokenizer, source: str, texts: list[str], window: int | None) -> list[float]:
    """The reference: every row read whole, its window's log-probability minus the source's."""
    def log_probs(text: str) -> tuple[list[int], list[float]]:
        ids = [tokenizer.bos_token_id, *tokenizer.encode(text)]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        return ids, [0.0, *torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()]

    source_ids, source_lp = log_probs(source)
    scores = []
    for text in texts:
        ids, lp = log_probs(text)
        (start, end), (row_start, row_end) = changed_span(source_ids, ids, window)
        scores.append(sum(lp[row_start:row_end]) - sum(source_lp[start:end]))
    return scores


def tiny_hf_model(family: str, sliding_window: int = 64):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128)
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).eval()
    config = transformers.Gemma3TextConfig(**shape, head_dim=8, sliding_window=sliding_window,
                                           layer_types=["sliding_attention", "full_attention"])
    return transformers.Gemma3ForCausalLM(config).eval()


SCORED = ("il a manger une pome",
          ["il a manger une pome", "il a mangé une pome", "il a manger une pomme", "elle a manger une pome",
           "Il a manger une pome", "il a manger une pome.", "il a manger une pom", "il a manger des pommes rouges"])


@pytest.mark.parametrize("family, sliding_window", [("llama", 64), ("gemma", 64), ("gemma", 6)])
@pytest.mark.parametrize("window", [None, 2])
def test_sentence_scores_reading_windows_after_the_shared_source_equal_whole_rows(family, sliding_window, window):
    # a sliding window of 6 tokens is shorter than the sentence: each row is then read whole
    model, tokenizer = tiny_hf_model(family, sliding_window), IdTokenizer()
    source, texts = SCORED
    scores = HFSentenceScorer(model, tokenizer, window=window)(source, texts)
    assert scores == pytest.approx(whole_row_scores(model, tokenizer, source, texts, window), abs=1e-4)
    assert scores[0] == 0.0


@pytest.mark.parametrize("window", [None, 2])
def test_sentence_scores_after_a_preamble_are_whole_rows_read_after_it(window):
    model, tokenizer = tiny_hf_model("gemma"), IdTokenizer()
    source, texts = SCORED
    preamble = "relu: "
    scores = HFSentenceScorer(model, tokenizer, window=window, preamble=preamble)(source, texts)
    expected = whole_row_scores(model, tokenizer, preamble + source, [preamble + t for t in texts], window)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores != pytest.approx(HFSentenceScorer(model, tokenizer, window=window)(source, texts), abs=1e-3)


def test_the_cli_offers_every_scorer():
    from correcteur.choose import SCORERS
    from correcteur.cli import build_parser

    args = build_parser("choose").parse_args(["choose", "--checkpoint", "x", "--val", "v.json",
                                               "--scorer", "gemma-proofread"])
    assert args.scorer == "gemma-proofread"
    for name in SCORERS:
        assert build_parser("choose").parse_args(["choose", "--checkpoint", "x", "--val", "v",
                                                  "--scorer", name]).scorer == name


def test_sentence_scores_without_a_window_are_whole_sentence_differences():
    model, tokenizer = tiny_hf_model("llama"), IdTokenizer()
    source, texts = SCORED
    whole = whole_row_scores(model, tokenizer, "", [source, *texts], None)  # from the start token on
    assert HFSentenceScorer(model, tokenizer, window=None)(source, texts) == pytest.approx(
        [w - whole[0] for w in whole[1:]], abs=1e-4)


# --- the chooser --------------------------------------------------------------------------

class TableScorer:
    """Scores from a table (texts missing from it score 0), and a record of every call."""

    name = "table"

    def __init__(self, table: dict[str, float]):
        self.table, self.calls = table, []

    def __call__(self, source: str, texts: list[str]) -> list[float]:
        self.calls.append(list(texts))
        return [self.table.get(t, 0.0) for t in texts]


SOURCE = "Il a manger a Paris."


def candidate(old: str, new: str, source: str, text: str = SOURCE) -> Candidate:
    start = text.index(old)
    return Candidate(start, start + len(old), new, source)


def test_clusters_group_overlapping_spans():
    found = [Candidate(0, 2, "x", "grammar"), Candidate(1, 4, "y", "model"), Candidate(5, 6, "z", "accent"),
             Candidate(6, 6, "!", "model"), Candidate(6, 8, "w", "lexicon")]
    assert clusters(found) == [[0, 1], [2], [3], [4]]
    assert apply_candidates("abcdefgh", [found[2], found[3], found[4]]) == "abcdez!w"


def test_the_best_candidate_of_each_cluster_wins_if_it_reaches_its_margin():
    found = [candidate("manger", "mangé", "grammar"), candidate("manger", "mangez", "variant"),
             candidate("a Paris", "à Paris", "homophone")]
    table = {SOURCE: -20.0, "Il a mangé a Paris.": -15.0, "Il a mangez a Paris.": -16.0,
             "Il a manger à Paris.": -18.5, "Il a mangé à Paris.": -13.0}
    weighing = Weighing(TableScorer(table), SOURCE, found)
    assert weighing.margins == [5.0, 4.0, 1.5]
    config = ChooserConfig(margins={"grammar": 0.0, "variant": 0.0, "homophone": 2.0}, joint=False)
    assert [c.candidate.replacement for c in choose(weighing, config)] == ["mangé"]
    config.margins["homophone"] = 1.0
    chosen = choose(weighing, config)
    assert apply_candidates(SOURCE, [c.candidate for c in chosen]) == "Il a mangé à Paris."
    config.margins["grammar"] = None  # a source switched off proposes nothing
    assert [c.candidate.replacement for c in choose(weighing, config)] == ["mangez", "à Paris"]


def test_a_winner_must_lead_its_runner_up_by_its_sources_lead():
    text = "Il a mangé a Praris."
    found = [candidate("Praris", "Paris", "speller", text), candidate("Praris", "Parsis", "speller", text),
             candidate("a Praris", "à Paris", "model", text), candidate("a Praris", "à Praris", "homophone", text)]
    table = {text: -30.0, "Il a mangé a Paris.": -18.0, "Il a mangé a Parsis.": -21.0, "Il a mangé à Paris.": -17.0,
             "Il a mangé à Praris.": -29.0}
    weighing = Weighing(TableScorer(table), text, found)
    assert weighing.margins == [12.0, 9.0, 13.0, 1.0]

    def kept(margins: dict, leads: dict) -> list[str]:
        return [c.candidate.replacement for c in choose(weighing, ChooserConfig(margins=margins, leads=leads, joint=False))]

    assert kept({"speller": 4.0}, {}) == ["Paris"]  # no lead asked: the best that reaches its margin
    assert kept({"speller": 4.0}, {"speller": 3.0}) == ["Paris"]  # 12 against 9: a lead of 3
    assert kept({"speller": 4.0}, {"speller": 3.5}) == []
    assert kept({"speller": 4.0, "homophone": 0.0}, {"speller": 3.0}) == ["Paris"]
    # a candidate that does not reach its own margin is still a runner-up: the judge liked it better
    assert kept({"speller": 4.0, "model": 20.0}, {"speller": 3.0}) == []
    assert kept({"speller": 4.0, "model": 20.0}, {}) == ["Paris"]
    assert kept({"speller": 4.0, "model": 0.0}, {"model": 1.0}) == ["à Paris"]  # 13 against 12
    assert kept({"homophone": 0.0}, {"homophone": 6.0}) == ["à Praris"]  # alone in its cluster: no runner-up


def test_a_replayed_setting_chooses_what_the_live_chooser_chooses():
    """A weighing of every source keeps each source's own candidates, so that a setting with
    "accent" off still finds the "où" that accent and homophone both propose, named as the live
    chooser names it, in the clusters the live chooser makes."""
    text = "Je ne sais pas ou il est."
    table = {"Je ne sais pas où il est.": 5.0, "Je ne sait pas ou il est.": 2.0, "Je ne sait pas où il est.": 7.0}
    everything = Weighing(TableScorer(table), text, proposals(text, None, ("accent", "homophone"), one_per_edit=False))
    assert {c.source for c in everything.found if c.replacement == "où"} == {"accent", "homophone"}
    for margins in ({"homophone": 1.0}, {"accent": 1.0, "homophone": 1.0}, {"accent": 1.0}, {"homophone": 2.5}):
        config = ChooserConfig(margins=margins)
        live = Chooser(TableScorer(table), config)
        replayed = [(c.candidate, c.margin) for c in choose(everything, config)]
        assert replayed == [(c.candidate, c.margin) for c in live.choices(text)]
    assert [c.candidate.source for c in choose(everything, ChooserConfig(margins={"accent": 1.0, "homophone": 1.0}))] \
        == ["homophone", "accent"]  # "sait", then "où" named by the first source that proposes it


def test_a_lead_is_over_another_sentence_not_over_the_same_edit_spelt_wider():
    text = "Il vit à Praris."
    found = [candidate("Praris", "Paris", "speller", text), candidate("Praris", "Parsis", "speller", text),
             candidate("Praris.", "Paris.", "model", text)]
    weighing = Weighing(TableScorer({text: -30.0, "Il vit à Paris.": -15.0, "Il vit à Parsis.": -25.0}), text, found)
    config = ChooserConfig(margins={"speller": 4.0, "model": 4.0}, leads={"speller": 6.0}, joint=False)
    assert [c.candidate.source for c in choose(weighing, config)] == ["speller"]  # 15 against Parsis's 5


def test_joint_scoring_takes_the_best_edit_first_and_drops_one_that_loses_its_margin_after_it():
    found = [candidate("manger", "mangé", "grammar"), candidate("a Paris", "à Paris", "homophone")]
    table = {SOURCE: -20.0, "Il a mangé a Paris.": -15.0, "Il a manger à Paris.": -17.0,
             "Il a mangé à Paris.": -14.0}  # beside "mangé", "à" only wins 1 nat
    config = ChooserConfig(margins={"grammar": 0.0, "homophone": 2.0}, joint=True)
    chosen = choose(Weighing(TableScorer(table), SOURCE, found), config)
    assert [(c.candidate.replacement, c.margin) for c in chosen] == [("mangé", 5.0)]
    config.margins["homophone"] = 0.5  # now it wins its margin beside "mangé": 1 nat
    chosen = choose(Weighing(TableScorer(table), SOURCE, found), config)
    assert [(c.candidate.replacement, c.margin) for c in chosen] == [("mangé", 5.0), ("à Paris", 1.0)]


def test_joint_scoring_keeps_one_of_two_edits_that_fix_the_same_error_twice():
    text = "Il à quitté Paris."
    found = [candidate("à", "a", "grammar", text), candidate("quitté", "quitter", "grammar", text)]
    table = {text: -20.0, "Il a quitté Paris.": -12.0, "Il à quitter Paris.": -17.0,
             "Il a quitter Paris.": -16.0}
    both_alone = choose(Weighing(TableScorer(table), text, found), ChooserConfig(margins={"grammar": 1.0}, joint=False))
    assert apply_candidates(text, [c.candidate for c in both_alone]) == "Il a quitter Paris."
    config = ChooserConfig(margins={"grammar": 1.0}, joint=True)
    chosen = choose(Weighing(TableScorer(table), text, found), config)
    assert [(c.candidate.replacement, c.margin) for c in chosen] == [("a", 8.0)]
    # the margin is asked of the surplus: with a larger margin for its source, a smaller gain goes first
    found[1] = Candidate(found[1].start, found[1].end, "quitter", "variant")
    config = ChooserConfig(margins={"grammar": 7.5, "variant": 0.0}, joint=True)
    chosen = choose(Weighing(TableScorer(table), text, found), config)
    assert [(c.candidate.replacement, c.margin) for c in chosen] == [("quitter", 3.0)]


def test_frequency_shift_compares_the_word_lists_counts_of_known_words():
    counts = word_frequencies()
    text = "Quand à moi, je reste."
    assert frequency_shift(candidate("Quand", "Quant", "homophone", text), text) == pytest.approx(
        math.log(counts["quant"] / counts["quand"]))
    assert frequency_shift(candidate("à moi", "a moi", "grammar", text), text) == pytest.approx(
        math.log(counts["a"] / counts["à"]))
    assert frequency_shift(candidate("moi", "mois", "variant", text), text) == pytest.approx(
        math.log(counts["mois"] / counts["moi"]))
    assert frequency_shift(candidate("moi, je", "toi, tu", "model", text), text) == pytest.approx(
        math.log(counts["toi"] * counts["tu"] / (counts["moi"] * counts["je"])))
    assert frequency_shift(candidate("reste", "rezte", "model", text), text) == 0.0  # an unknown word has no count
    assert frequency_shift(candidate("je reste", "reste", "model", text), text) == 0.0  # no swap: a word dropped
    elided = "Je pense que il viendra, quelle chance."
    assert [frequency_shift(c, elided) for c in elision_candidates(elided)] == [0.0]  # que il → qu'il
    assert frequency_shift(candidate("quelle", "qu'elle", "homophone", elided), elided) == 0.0


def test_a_rarer_word_wins_by_its_fit_when_the_frequency_correction_is_asked():
    text = "Quand à moi, je reste."
    found = [candidate("Quand", "Quant", "homophone", text), candidate("reste", "restes", "variant", text)]
    table = {"Quant à moi, je reste.": 1.0, "Quand à moi, je restes.": -2.0}
    weighing = Weighing(TableScorer(table), text, found)
    rarer = -weighing.shifts[0]  # quant is about 4 nats rarer than quand
    assert rarer > 3.0
    margins = {"homophone": 3.0, "variant": 2.0}  # "restes" is rarer too, but fits worse
    assert choose(weighing, ChooserConfig(margins=margins)) == []
    chosen = choose(weighing, ChooserConfig(margins=margins, frequency=1.0))
    assert [(c.candidate.replacement, c.margin) for c in chosen] == [("Quant", pytest.approx(1.0 + rarer))]
    assert choose(weighing, ChooserConfig(margins=margins, frequency=1.0, joint=False)) == chosen
    assert choose(weighing, ChooserConfig(margins=margins, frequency=0.25)) == []  # 1 + 1.0 < 3


def test_the_joint_rounds_ask_each_edits_fit_not_its_gain():
    """Two winners, "Quant" (4 nats rarer than quand) and "et" (a little more common than est):
    once "Quant" is taken, "et" is weighed beside it by its fit, its gain there less its shift,
    so that a gain just over its margin is not enough."""
    text = "Quand à Paul, il est là."
    found = [candidate("Quand", "Quant", "homophone", text), candidate("est", "et", "grammar", text)]
    both = "Quant à Paul, il et là."
    table = {"Quant à Paul, il est là.": 1.0, "Quand à Paul, il et là.": 3.0, both: 4.5}
    weighing = Weighing(TableScorer(table), text, found)
    rarer, et = -weighing.shifts[0], weighing.shifts[1]
    config = ChooserConfig(margins={"homophone": 3.0, "grammar": 2.0}, frequency=1.0)
    # alone: "et" fits by 3 - et, "Quant" by 1 + rarer (about 5): "Quant" first; then "et" gains
    # 4.5 - 1 = 3.5 nats beside it, and fits by 3.5 - et (about 3.3): kept
    chosen = choose(weighing, config)
    assert [(c.candidate.replacement, c.margin) for c in chosen] == [
        ("Quant", pytest.approx(1.0 + rarer)), ("et", pytest.approx(3.5 - et))]
    table[both] = 1.0 + 2.1  # beside "Quant", "et" now gains 2.1 nats: enough raw, not once corrected
    assert 2.1 - et < 2.0 < 2.1
    chosen = choose(Weighing(TableScorer(table), text, found), config)
    assert [(c.candidate.replacement, c.margin) for c in chosen] == [("Quant", pytest.approx(1.0 + rarer))]


def test_the_chooser_scores_each_sentence_once_and_leaves_protected_text_alone():
    scorer = TableScorer({"Il a mangé a Paris.": 3.0})
    chooser = Chooser(scorer, ChooserConfig(margins={"grammar": 0.5, "model": 0.5}))
    answer = "Il a mangé à Paris."
    assert chooser(SOURCE, answer) == "Il a mangé a Paris."
    assert all(len(call) == len(set(call)) for call in scorer.calls)
    assert chooser(SOURCE, answer, protected=[(5, 11)]) == SOURCE  # "manger" is the user's word
    assert chooser("   ") == "   "


def test_chooser_config_round_trip(tmp_path):
    config = ChooserConfig(margins={"grammar": -1.0, "model": None}, leads={"grammar": 2.0}, joint=False,
                           scorer="gemma")
    save_chooser_config(config, tmp_path, {"entries": 3})
    assert load_chooser_config(tmp_path) == config
    recorded = json.loads((tmp_path / "choose.json").read_text())
    del recorded["config"]["leads"]  # tuned before leads were searched: none asked
    (tmp_path / "choose.json").write_text(json.dumps(recorded))
    assert load_chooser_config(tmp_path / "best.pt") == dataclasses.replace(config, leads={})  # a checkpoint file's folder
    (tmp_path / "untuned").mkdir()
    assert load_chooser_config(tmp_path / "untuned") is None


# --- tuning -------------------------------------------------------------------------------

def synthetic_entries() -> tuple[list[dict], dict[str, float]]:
    """Twenty sentences whose misspelling the model's answer fixes and a rule does not, and
    ten correct ones that the "homophone" source would spoil: a scripted scorer likes every
    fix by 5 nats and every spoilt sentence by 1."""
    entries, table = [], {}
    for i in range(20):
        source, fixed = f"Le chat{i} a manger.", f"Le chat{i} a mangé."
        entries.append({"input": source, "output": fixed, "raw_response": fixed})
        table[fixed] = 5.0
    for i in range(10):
        clean = f"La maison{i} est belle."
        entries.append({"input": clean, "output": clean, "raw_response": clean})
        table[f"La maison{i} et belle."] = 1.0
    return entries, table


def test_tuning_finds_the_margins_that_fix_errors_without_harm():
    entries, table = synthetic_entries()
    replay = Replay(TableScorer(table), entries, ("homophone", "model"), progress=False)
    config, tried = tune_chooser(replay, ("homophone", "model"), scorer="table", max_harm=0.1, min_clean=0.7)
    assert config.margins["model"] is not None and config.margins["model"] <= 5.0
    assert config.margins["homophone"] is None or config.margins["homophone"] > 1.0  # it would spoil the clean ten
    best = replay.scores(config)
    assert best["error_reduction"] == 1.0 and best["harm_rate"] == 0.0
    assert tried[0]["margins"] == {"homophone": None, "model": None}  # it starts from doing nothing
    assert any(row["harm_rate"] > 0 for row in tried)


def test_tuning_takes_the_frequency_correction_where_only_it_tells_fixes_from_spoils():
    """A scripted judge that, like a small language model, likes common words: a sentence's
    score is how well its edit fits (2 nats for "Quand à" → "Quant à", 1 for "est" → "et" in ten
    correct sentences, -5 for any other) plus how much more common its words are. Quant is 4
    nats rarer than quand and et as common as est: without the correction the spoils outscore
    the fixes, with it the fixes stand out."""
    entries = [{"input": f"Quand à Paul{i}, il reste.", "output": f"Quant à Paul{i}, il reste."} for i in range(20)]
    entries += [{"input": f"La maison{i} est belle.", "output": f"La maison{i} est belle."} for i in range(10)]
    fits = {**{e["output"]: 2.0 for e in entries[:20]}, **{f"La maison{i} et belle.": 1.0 for i in range(10)}}
    table = {c.apply(e["input"]): fits.get(c.apply(e["input"]), -5.0) + frequency_shift(c, e["input"])
             for e in entries for c in proposals(e["input"], None, ("homophone",))}
    replay = Replay(TableScorer(table), entries, ("homophone",), progress=False)
    plain, tried = tune_chooser(replay, ("homophone",), scorer="table", max_harm=0.1, min_clean=0.7)
    assert replay.scores(plain)["error_reduction"] == 0.0  # the copy: anything looser spoils the ten
    assert {row["frequency"] for row in tried} == {0.0}  # a grid of one value: the correction left out
    config, tried = tune_chooser(replay, ("homophone",), scorer="table", max_harm=0.1, min_clean=0.7,
                                 frequency_grid=FREQUENCY_GRID)
    assert config.frequency == 1.0
    best = replay.scores(config)
    assert best["error_reduction"] == 1.0 and best["harm_rate"] == 0.0
    assert {row["frequency"] for row in tried} == set(FREQUENCY_GRID)


def test_each_tuning_file_weighs_the_same_in_the_objective():
    entries, table = synthetic_entries()
    first, second = entries[:15], entries[15:]  # 15 errors; 5 errors and 10 correct sentences
    config = ChooserConfig(margins={"model": 0.5})
    table = {**table, **{e["output"]: 0.0 for e in entries[:10]}}  # the first ten fixes no longer win
    both = Replay(TableScorer(table), entries, ("model",), progress=False, parts=[15, 15]).scores(config)
    alone = [Replay(TableScorer(table), part, ("model",), progress=False).scores(config) for part in (first, second)]
    assert [{k: v for k, v in part.items()} for part in both["parts"]] == [
        {k: v for k, v in a.items() if k != "parts"} for a in alone]
    assert [part["error_reduction"] for part in both["parts"]] == [pytest.approx(1 / 3), 1.0]
    assert both["error_reduction"] == pytest.approx(0.5)  # pooled: 10 of 20 errors
    assert objective(both) == pytest.approx(2 / 3)
    assert objective({"error_reduction": 0.3}) == 0.3  # one file
    assert objective({"error_reduction": None, "parts": [{"error_reduction": None}, {"error_reduction": 0.5}]}) == 0.25
    with pytest.raises(ValueError, match="do not add up"):
        Replay(TableScorer(table), entries, ("model",), progress=False, parts=[15, 14])


class ScriptedReplay:
    """Scores as a scripted function of two sources' margins: "a" loose fixes most but spends
    most of the harm allowed; "b" loose fixes more, but not beside a loose "a"."""

    entries = [{"input": "x", "output": "x"}]
    # (margins up to this, (error reduction, harm)) from loosest to strictest; off does nothing
    EFFECTS = {"a": [(-2.0, (0.5, 0.010)), (2.0, (0.4, 0.004)), (8.0, (0.1, 0.0))],
               "b": [(0.0, (0.3, 0.008)), (8.0, (0.05, 0.0))]}

    def effect(self, source: str, margin: float | None) -> tuple[float, float]:
        return (0.0, 0.0) if margin is None else next(e for bound, e in self.EFFECTS[source] if margin <= bound)

    def scores(self, config: ChooserConfig) -> dict:
        a, b = (self.effect(source, config.margins[source]) for source in ("a", "b"))
        return {"error_reduction": a[0] + b[0], "harm_rate": a[1] + b[1], "clean_preserved": 1.0,
                "exact_match": 0.0, "n": 1000, "n_clean": 100}


def test_tuning_moves_two_margins_at_once_where_one_at_a_time_is_stuck():
    config, tried = tune_chooser(ScriptedReplay(), ("a", "b"), scorer="table")
    stuck = {"a": -4.0, "b": 1.0}  # where one source at a time ends: 0.55
    assert next(row for row in tried if row["margins"] == stuck)["error_reduction"] == pytest.approx(0.55)
    assert config.margins == {"a": -1.0, "b": -1.0}  # "a" gives up a little harm, "b" spends it
    assert ScriptedReplay().scores(config)["error_reduction"] == pytest.approx(0.7)


class LeadReplay(ScriptedReplay):
    """A speller whose loose margin fixes much but harms too much, unless its winners must lead
    their runners-up by 2 nats or more (a lead of 4 or more leaves too little)."""

    def scores(self, config: ChooserConfig) -> dict:
        margin, lead = config.margins["speller"], config.leads.get("speller")
        fixed, harm = (0.0, 0.0) if margin is None else (0.5, 0.05) if margin <= 4.0 else (0.1, 0.0)
        if margin is not None and lead is not None and lead >= 2.0:
            fixed, harm = (0.4 if lead < 4.0 else 0.2, 0.0)
        return {"error_reduction": fixed, "harm_rate": harm, "clean_preserved": 1.0, "exact_match": 0.0,
                "n": 1000, "n_clean": 100}


def test_tuning_searches_a_sources_margin_and_lead_together():
    config, tried = tune_chooser(LeadReplay(), ("speller",), scorer="table", lead_sources=("speller",))
    assert config.leads == {"speller": 2.0} and config.margins["speller"] is not None
    assert LeadReplay().scores(config)["error_reduction"] == pytest.approx(0.4)
    assert all(row["leads"] == {"speller": None} for row in tried[:2])  # it starts asking no lead
    unled, _ = tune_chooser(LeadReplay(), ("speller",), scorer="table")  # leads are searched when asked
    assert unled.leads == {} and LeadReplay().scores(unled)["error_reduction"] == pytest.approx(0.1)


class TwoFileReplay(ScriptedReplay):
    """Source "a": loose, it fixes half and harms 1% of all entries, but all of that harm falls in
    the second file (a tenth of the entries); strict, it fixes less and harms nothing."""

    def scores(self, config: ChooserConfig) -> dict:
        margin = config.margins["a"]
        fixed, harm = (0.0, 0.0) if margin is None else (0.5, 0.01) if margin <= 0.0 else (0.2, 0.0)
        part = lambda n, h: {"error_reduction": fixed, "harm_rate": h, "clean_preserved": None, "n": n, "n_clean": 0}  # noqa: E731
        return {**part(10000, harm), "exact_match": 0.0, "parts": [part(9000, 0.0), part(1000, harm * 10)]}


def test_the_targets_must_hold_in_each_tuning_file():
    config, tried = tune_chooser(TwoFileReplay(), ("a",), scorer="table")
    assert config.margins["a"] > 0.0  # the loose margin meets the targets pooled, not in the second file
    loose = next(row for row in tried if row["margins"] == {"a": 0.0})
    assert not loose["meets_targets"] and loose["harm_rate"] == 0.01


def test_nearby_settings_run_from_loosest_to_strictest():
    assert nearby(-4.0, MARGIN_GRID) == [-4.0, -2.0, -1.0]
    assert nearby(None, MARGIN_GRID) == [6.0, 8.0, None]
    assert nearby(1.0, MARGIN_GRID, steps=1) == [0.0, 1.0, 2.0]
    assert nearby(None, LEAD_GRID) == [None, 0.0, 1.0]  # asking no lead is the loosest


def test_tuning_refuses_an_empty_split():
    with pytest.raises(UserError, match="no validation entries"):
        tune_chooser(Replay(TableScorer({}), [], progress=False))


def test_weighings_are_reused_from_their_cache_only_for_the_same_entries_and_judge(tmp_path):
    entries, table = synthetic_entries()
    cache = tmp_path / "weighings.pkl"
    scorer = TableScorer(table)
    first = Replay(scorer, entries, ("homophone", "model"), progress=False, cache=cache)
    config = ChooserConfig(margins={"homophone": 0.5, "model": 0.5})
    answers = first.responses(config)
    save_weighings(first.weighings, first.key, cache)
    calls = len(scorer.calls)
    again = Replay(scorer, entries, ("homophone", "model"), progress=False, cache=cache)
    assert again.responses(config) == answers and len(scorer.calls) == calls  # no sentence scored again
    assert all(w.scorer is scorer for w in again.weighings)
    other = TableScorer(table)
    other.name = "another judge"
    Replay(other, entries, ("homophone", "model"), progress=False, cache=cache)
    assert len(other.calls) == len(entries)  # weighed afresh: one batch an entry
    Replay(scorer, entries[:3], ("homophone", "model"), progress=False, cache=cache)
    assert len(scorer.calls) == calls  # each entry is found by itself
    changed = [{**entries[0], "raw_response": "Le chat0 a mangé !"}, *entries[1:3]]
    Replay(scorer, changed, ("homophone", "model"), progress=False, cache=cache)
    assert len(scorer.calls) == calls + 1  # another answer: that entry alone is weighed again


def test_the_everyday_errors_are_ours_and_well_formed():
    entries = load_entries(EVERYDAY_ERRORS)
    assert len(entries) == 373
    clean = [e for e in entries if e["input"] == e["output"]]
    assert len(clean) == 153 and all(e.get("type") in (None, "none") for e in clean)
    assert all(e.get("type") not in (None, "none") for e in entries if e["input"] != e["output"])
    assert len({e["input"] for e in entries}) == len(entries)
    corpus = {r.output for r in load_embedded()}  # never a sentence the model was trained on
    assert not corpus & ({e["input"] for e in entries} | {e["output"] for e in entries})


# --- (input, target) files ----------------------------------------------------------------

def test_a_tsv_of_pairs_becomes_entries(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("type\tinput\ttarget\trule\nhomophone\tIl a conte.\tIl a compte.\tR1\n"
                    "clean\tTout va bien.\tTout va bien.\tR2\n", encoding="utf-8")
    assert load_entries(path) == [
        {"type": "homophone", "rule": "R1", "input": "Il a conte.", "output": "Il a compte.",
         "error_types": ["homophone"]},
        {"type": "clean", "rule": "R2", "input": "Tout va bien.", "output": "Tout va bien.", "error_types": []}]
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('input,output\n"Un, deux",Un deux\n', encoding="utf-8")
    assert load_entries(csv_path) == [{"input": "Un, deux", "output": "Un deux"}]


@pytest.mark.parametrize("content, message", [
    ("source\ttarget\nA\tB\n", "must name the columns 'input' and 'target'"),
    ("input\ttarget\nA\tB\nC\n", "1 rows do not have the header's columns (line 3 first)"),
    ("", "must name the columns"),
])
def test_bad_pair_files_get_clear_messages(tmp_path, content, message):
    path = tmp_path / "pairs.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_entries(path)


def test_a_pair_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes("input\ttarget\nété\tété\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_entries(path)


def test_evaluate_reads_a_tsv(tmp_path):
    """The JSON entries of the split and the same entries as a TSV score the same."""
    rows = [("Il a manger.", "Il a mangé."), ("Tout va bien.", "Tout va bien.")]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("input\ttarget\n" + "".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    as_json = tmp_path / "pairs.json"
    as_json.write_text(json.dumps([{"input": a, "output": b} for a, b in rows]), encoding="utf-8")
    assert load_entries(tsv) == json.loads(as_json.read_text(encoding="utf-8"))


# --- the corrector with a chooser ---------------------------------------------------------

def test_the_corrector_uses_its_chooser_and_generates_only_when_the_model_proposes():
    from tests.test_correct import scripted

    text = "Il a manger a Paris. Tout va bien."
    corrector = scripted({"Il a manger a Paris.": "Il a mangé à Paris.", "Tout va bien.": "Tout va mal."})
    corrector.chooser = Chooser(TableScorer({"Il a mangé a Paris.": 4.0, "Tout va mal.": 0.5}),
                                ChooserConfig(margins={"model": 1.0}))
    assert corrector.correct(text) == "Il a mangé a Paris. Tout va bien."  # "à" and "mal" win too little
    assert corrector.model.batches  # the model answered: its edits are candidates
    [edit] = corrector.suggest(text)
    assert (edit.offset, edit.length, edit.replacement, edit.source, edit.confidence) == (5, 6, "mangé", "modèle", 4.0)

    silent = scripted({})
    silent.chooser = Chooser(TableScorer({"Il a mangé a Paris.": 4.0}), ChooserConfig(margins={"variant": 1.0}))
    silent.correct("Il a manger a Paris.")
    assert silent.model.batches == []  # no source asks the model: nothing is generated
