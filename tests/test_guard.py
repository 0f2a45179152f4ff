"""The guard keeps the model's edits only where they pass; its tuning meets the targets."""

import json

import pytest
import torch

from correcteur.errors import UserError
from correcteur.guard import (
    Answer,
    Guard,
    GuardConfig,
    guard_for_checkpoint,
    load_guard_config,
    save_guard_config,
)
from correcteur.guard_tuning import grid_row, guard_settings, tune_guard, wilson_bounds
from correcteur.model import GPTModel
from correcteur.prompt import build_prompt
from correcteur.textdiff import apply_edits, edit_pieces, levenshtein, typo_distance

LEXICON = frozenset({"les", "enfants", "sont", "allés", "à", "école", "l", "il", "faut", "que", "tu", "viennes", "viens", "vienne"})
TINY = {"vocab_size": 50257, "context_length": 128, "emb_dim": 32, "n_heads": 2, "n_layers": 1,
        "drop_rate": 0.0, "qkv_bias": True}


def make_guard(tokenizer, **config) -> Guard:
    torch.manual_seed(0)
    return Guard(GPTModel(TINY).eval(), tokenizer, "short", GuardConfig(**config), lexicon=LEXICON)


def test_lexicon_keeps_known_edits_and_undoes_unknown_ones(tokenizer):
    guard = make_guard(tokenizer)
    source = "Les enfant sont aller a l'école."
    candidate = "Les enfants sont allézz à l'école."
    # enfant→enfants and a→à bring in known words; aller→allézz does not and is put back.
    pieces = edit_pieces(source, candidate)
    assert apply_edits(pieces, guard.known_edits(source, pieces)) == "Les enfants sont aller à l'école."
    # Words already in the source are always allowed, whatever the lexicon says.
    assert guard.known_edits("Xyz abc.", edit_pieces("Xyz abc.", "abc Xyz.")) == {0, 1}
    lenient = make_guard(tokenizer, max_edit_ratio=1.0, min_margin=-1e9)
    assert lenient.decide(source, candidate) == ("Les enfants sont aller à l'école.", "accepted")


def test_decide_reasons(tokenizer):
    guard = make_guard(tokenizer, max_edit_ratio=0.2, min_margin=-1e9)
    source = "Il faut que tu viens."
    assert guard.decide(source, source) == (source, "unchanged")
    assert guard.decide(source, "   ") == (source, "empty")
    assert guard.decide(source, "Tout autre chose, vraiment rien à voir.") == (source, "edit budget")
    assert guard.decide(source, "Il faut que tu vienzz.") == (source, "lexicon")
    assert guard.decide(source, "Il faut que tu viennes.") == ("Il faut que tu viennes.", "accepted")
    strict = make_guard(tokenizer, max_edit_ratio=0.2, min_margin=1e9)
    assert strict.decide(source, "Il faut que tu viennes.") == (source, "margin")


def test_log_prob_is_the_sum_of_the_answer_tokens_log_probabilities(tokenizer):
    guard = make_guard(tokenizer)
    source, answer = "Il faut que tu viens.", "Il faut que tu viennes."
    prompt = tokenizer.encode(build_prompt({"instruction": "Corrigez le texte suivant.", "input": source}, "short"))
    target = tokenizer.encode(answer) + [tokenizer.eot_token]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        log_probs = torch.log_softmax(guard.model(ids)[0], dim=-1)
    expected = sum(log_probs[len(prompt) - 1 + i, t].item() for i, t in enumerate(target))
    assert guard.log_probs(source, [answer])[0] == pytest.approx(expected, abs=1e-4)
    # One right-padded batch scores each answer as if it were alone.
    answers = [answer, "Il", "Il faut que tu viennes, je crois, demain matin.", source]
    batched = guard.log_probs(source, answers)
    assert batched == pytest.approx([guard.log_probs(source, [a])[0] for a in answers], abs=1e-4)
    assert batched[0] == pytest.approx(expected, abs=1e-4)


def test_rows_longer_than_the_context_lose_the_prompt_start_and_no_more(tokenizer):
    guard = make_guard(tokenizer)
    source = " ".join(["Les enfants jouent dans le jardin."] * 6)  # prompt + answer > 128 tokens
    prompt = tokenizer.encode(build_prompt({"instruction": "Corrigez le texte suivant.", "input": source}, "short"))
    target = tokenizer.encode(source) + [tokenizer.eot_token]
    assert len(prompt) + len(target) > TINY["context_length"] > len(target)
    ids = torch.tensor([(prompt + target)[-TINY["context_length"]:]])
    with torch.no_grad():
        log_probs = torch.log_softmax(guard.model(ids[:, :-1])[0], dim=-1)
    first = ids.shape[1] - len(target) - 1
    expected = sum(log_probs[first + i, t].item() for i, t in enumerate(target))
    assert guard.log_probs(source, [source])[0] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(UserError, match="cannot be scored"):
        guard.log_probs("Court.", ["mot " * 200])


def test_edit_pieces_round_trip():
    source, candidate = "Les enfant sont aller a l'école hier.", "Les enfants sont allés à l'école."
    pieces = edit_pieces(source, candidate)
    edits = [piece for piece in pieces if piece[0] == "edit"]
    assert apply_edits(pieces, set()) == source
    assert apply_edits(pieces, set(range(len(edits)))) == candidate
    assert [e[1:] for e in edits] == [("enfant", "enfants"), ("aller", "allés"), ("a", "à"),
                                      ("l'école hier.", "l'école.")]
    assert apply_edits(pieces, {1}) == "Les enfant sont allés a l'école hier."


def test_per_edit_margin_keeps_the_good_edit_beside_a_bad_one(tokenizer, monkeypatch):
    source, candidate = "Les enfant sont allés à l'école.", "Les enfants sont allé à l'école."
    # enfant→enfants gains 3 nats, allés→allé loses 2: the whole answer gains 1.
    gains = {"enfants": 3.0, "allé ": -2.0}
    monkeypatch.setattr(Guard, "log_probs", lambda self, s, responses: [
        sum(g for word, g in gains.items() if word in r) for r in responses])
    whole = make_guard(tokenizer, max_edit_ratio=0.5, min_margin=0.5, lexicon=False)
    assert whole.decide(source, candidate) == (candidate, "accepted")  # the bad edit rides along
    per_edit = make_guard(tokenizer, max_edit_ratio=0.5, min_margin=0.5, lexicon=False, per_edit=True)
    assert per_edit.decide(source, candidate) == ("Les enfants sont allés à l'école.", "accepted")
    assert per_edit.decide(source, "Les enfant sont allé à l'école.") == (source, "margin")


def test_typo_distance_counts_a_swap_of_neighbours_as_one_typo():
    assert typo_distance("enfnats", "enfants") == 1 and levenshtein("enfnats", "enfants") == 2
    assert typo_distance("", "abc") == 3 and typo_distance("abc", "abc") == 0
    assert typo_distance("ca", "abc") == 3  # optimal string alignment: a swapped pair is not edited again
    words = ["école", "ecole", "écloe", "projet", "projeg", "poste", "a", "à", "", "allés", "allé"]
    for a in words:  # without swaps it is Levenshtein: never more, and at most half less
        for b in words:
            assert levenshtein(a, b) / 2 <= typo_distance(a, b) <= levenshtein(a, b)
            assert typo_distance(a, b) == typo_distance(b, a)


def test_stretch_budget_keeps_near_fixes_and_undoes_far_guesses(tokenizer):
    source = "Les enfant sont allés à l'écoel."
    candidate = "Les enfants sont allés à la maison."  # a fix one character away, a guess far away
    near = make_guard(tokenizer, max_edit_ratio=1.0, min_margin=-1e9, lexicon=False, max_stretch_edits=1)
    assert near.decide(source, candidate) == ("Les enfants sont allés à l'écoel.", "accepted")
    assert near.decide(source, "Les enfant sont allés à la maison.") == (source, "edit budget")
    # No budget: both edits kept; the stretch distances are the typos between each edit's words.
    anything = make_guard(tokenizer, max_edit_ratio=1.0, min_margin=-1e9, lexicon=False)
    assert anything.decide(source, candidate) == (candidate, "accepted")
    assert Answer(near, source, candidate).stretch_distances == [1, 8]
    assert near.decide("Les enfnats sont là.", "Les enfants sont là.") == ("Les enfants sont là.", "accepted")


def test_a_misspelling_fixed_may_ask_for_a_smaller_margin_than_a_word_swapped(tokenizer, monkeypatch):
    # "enfnt" → "enfants" gains 1 nat, "allés" → "allé" 0.5; "enfnt" is no French word, "allés"
    # is one (the lexicon still tells them apart when its own check is off).
    monkeypatch.setattr(Guard, "log_probs", lambda self, s, responses: [
        1.0 * ("enfants" in r) + 0.5 * ("allé " in r) for r in responses])
    source = "Les enfnt sont allés à l'école."
    candidate = "Les enfants sont allé à l'école."
    fixed = "Les enfants sont allés à l'école."
    guard = make_guard(tokenizer, max_edit_ratio=0.5, min_margin=2.0, lexicon=False, per_edit=True, nonword_margin=0.5)
    assert guard.nonword_edits(edit_pieces(source, candidate)) == {0}
    assert guard.decide(source, candidate) == (fixed, "accepted")
    # Judged whole, the lower margin applies only when every kept edit fixes a misspelling:
    # both edits together (1.5 nats) must reach the 2 nats asked of a swapped word.
    whole = make_guard(tokenizer, max_edit_ratio=0.5, min_margin=2.0, lexicon=False, nonword_margin=0.5)
    assert whole.decide(source, candidate) == (source, "margin")
    assert whole.decide(source, fixed) == (fixed, "accepted")
    assert whole.decide(fixed, "Les enfants sont allé à l'école.") == (fixed, "margin")
    # Without a lexicon nothing can be called a misspelling...
    assert Guard(guard.model, tokenizer, "short", GuardConfig(lexicon=False)).nonword_edits(
        edit_pieces(source, candidate)) == set()
    # ...so a guard whose margin for misspellings is set loads the lexicon even when its own
    # check is off, as tuning (which always has the lexicon) assumed.
    monkeypatch.setattr("correcteur.guard.french_lexicon", lambda: LEXICON)
    loaded = Guard(guard.model, tokenizer, "short", GuardConfig(0.5, 2.0, False, True, None, 0.5))
    assert loaded.lexicon == LEXICON and loaded.decide(source, candidate) == (fixed, "accepted")


def test_tuning_picks_the_best_setting_within_the_harm_budget(tokenizer, monkeypatch):
    guard = make_guard(tokenizer)
    # Both edits use known words and change one character, so only the model's confidence
    # can separate them: good fixes gain 3 nats, the harmful edit 0.5.
    calls = []

    def log_probs(self, source, responses):
        calls.append(len(responses))
        return [3.0 if "enfants" in r else 0.5 if "vienne." in r else 0.0 for r in responses]

    monkeypatch.setattr(Guard, "log_probs", log_probs)
    good = {"input": "Les enfant sont là.", "output": "Les enfants sont là.",
            "raw_response": "Les enfants sont là.", "error_types": ["agreement"]}
    harmful = {"input": "Il faut que tu viennes.", "output": "Il faut que tu viennes.",
               "raw_response": "Il faut que tu vienne.", "error_types": []}
    clean = {"input": "Il pleut.", "output": "Il pleut.", "raw_response": "Il pleut.", "error_types": []}
    # A sentence answered in two parts (too long for the context) is judged part by part.
    long = {"input": "Les enfant sont là, il faut que tu viennes.", "output": "Les enfants sont là, il faut que tu viennes.",
            "raw_response": "Les enfants sont là, il faut que tu vienne.", "error_types": ["agreement"],
            "raw_parts": [["Les enfant sont là,", "Les enfants sont là,", " "],
                          ["il faut que tu viennes.", "il faut que tu vienne.", ""]]}
    entries = [good] * 8 + [harmful] * 2 + [clean, long]
    config, grid = tune_guard(guard, entries, z=0.0)  # point estimates: 12 entries prove little
    # ratios x margins x lexicon on/off x per edit or whole x stretch budgets x misspelling
    # margins, less the settings that would ask more of a misspelling fixed than of a word swapped
    n_margins_below = sum(sum(m < margin for m in (-2.0, 0.0, 1.0, 2.0, 3.0)) + 1
                          for margin in (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0))
    assert len(grid) == len(guard_settings()) == 7 * 2 * 2 * 4 * n_margins_below
    # One batch per changed answer, each text once (the source and the edit); none for the
    # unchanged answer; one for each part of the long one.
    assert calls == [2] * (len(entries) - 2) + [2, 2]
    assert 0.5 < config.min_margin <= 3.0  # rejects the harmful edits, keeps the fixes
    best = grid_row(grid, config)
    assert best["harm_rate"] == 0 and best["error_reduction"] == 1.0 and best["clean_preserved"] == 1.0
    # Whole, the long answer would score 3.0 and pass; by part, its harmful half is refused.


def test_tuning_scores_every_text_the_grid_asks_for_in_one_batch(tokenizer, monkeypatch):
    """Three near edits and a far one: whatever the stretch budget, the lexicon and whole-or-per-edit,
    the grid never asks the model for a text it did not score up front."""
    guard = make_guard(tokenizer)
    calls = []

    def log_probs(self, source, responses):
        calls.append(len(responses))
        return [2.0 * ("enfants" in r) + 1.0 * (" à " in r) - 1.0 * ("maison" in r) for r in responses]

    monkeypatch.setattr(Guard, "log_probs", log_probs)
    entry = {"input": "Les enfant sont allés a l'écoel.", "output": "Les enfants sont allés à l'école.",
             "raw_response": "Les enfants sont allé à la maison.", "error_types": ["agreement"]}
    answer = Answer(guard, entry["input"], entry["raw_response"])
    assert answer.stretch_distances == [1, 1, 1, 8] and answer.known == {0, 2}
    config, grid = tune_guard(guard, [entry], z=0.0)
    # One batch, and no other: the source, each edit alone, and the answer under each stretch
    # budget with and without the lexicon ({0, 1, 2} for a budget of 1 is none of the others).
    assert len(calls) == 1 and calls[0] == 1 + 4 + 3
    assert grid_row(grid, config)["error_reduction"] > 0 and grid_row(grid, config)["harm_rate"] == 0
    with pytest.raises(UserError, match="no validation entries"):
        tune_guard(guard, [])
    with pytest.raises(UserError, match="no row for"):
        grid_row(grid, GuardConfig(max_edit_ratio=0.123))


def test_config_round_trip_next_to_a_checkpoint(tmp_path, tokenizer):
    assert load_guard_config(tmp_path) == GuardConfig()  # untuned: the defaults
    save_guard_config(GuardConfig(0.2, 1.5, False), tmp_path, {"entries": 3})
    assert load_guard_config(tmp_path) == GuardConfig(0.2, 1.5, False)
    guard = guard_for_checkpoint(GPTModel(TINY), tokenizer, "short", tmp_path / "best.pt")
    assert guard.config == GuardConfig(0.2, 1.5, False)
    # A guard.json written before the stretch budget and the misspelling margin existed: both off.
    old = {"max_edit_ratio": 0.2, "min_margin": 1.5, "lexicon": False, "per_edit": True}
    (tmp_path / "guard.json").write_text(json.dumps({"config": old, "tuning": {"grid": [
        {**old, "per_edit": False, "error_reduction": 0.1}, {**old, "error_reduction": 0.3}]}}))
    assert load_guard_config(tmp_path) == GuardConfig(0.2, 1.5, False, True, None, None)
    assert grid_row(json.loads((tmp_path / "guard.json").read_text())["tuning"]["grid"],
                    load_guard_config(tmp_path))["error_reduction"] == 0.3


def test_wilson_bounds_match_the_textbook_values():
    low, high = wilson_bounds(0.5, 100, 1.96)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert wilson_bounds(1.0, 46, 1.0)[0] == pytest.approx(46 / 47)  # all kept: n / (n + z²)
    assert wilson_bounds(0.0, 0, 1.0) == (0.0, 1.0)


def test_tuning_wants_the_targets_met_with_a_standard_error_to_spare(tokenizer, monkeypatch):
    """40 clean sentences: a setting that changes one of them (0.975 kept, just above 0.97)
    wins on point estimates; with z=1 only the setting that changes none is safe enough."""
    guard = make_guard(tokenizer)
    monkeypatch.setattr(Guard, "log_probs", lambda self, source, responses:
                        [2.5 if "vienne." in r else 3.5 if "enfants" in r else 0.0 for r in responses])
    good = {"input": "Les enfant sont là.", "output": "Les enfants sont là.",
            "raw_response": "Les enfants sont là.", "error_types": ["agreement"]}
    clean = {"input": "Il pleut.", "output": "Il pleut.", "raw_response": "Il pleut.", "error_types": []}
    spoiled = {"input": "Il faut que tu viennes.", "output": "Il faut que tu viennes.",
               "raw_response": "Il faut que tu vienne.", "error_types": []}
    entries = [good] * 100 + [clean] * 39 + [spoiled]
    loose, _ = tune_guard(guard, entries, z=0.0, max_harm=0.2)
    strict, grid = tune_guard(guard, entries, z=1.0, max_harm=0.2)
    assert loose.min_margin < 2.5 <= strict.min_margin < 3.5  # strict refuses the spoiling edit
    chosen = grid_row(grid, strict)
    assert chosen["meets_targets"] and not all(r["meets_targets"] for r in grid)
    assert {r["n_clean"] for r in grid} == {40}
