"""Reference-based metrics: exact values worked out by hand, the copy and reference
baselines, the failure modes, and Levenshtein against its recursive definition."""

import functools
import json
import random

import pytest

from correcteur.baselines import copy_baseline
from correcteur.cli import main
from correcteur.errors import UserError
from correcteur.metrics import (
    SCORE_KEYS,
    Edit,
    format_table,
    plot_error_types,
    score_entries,
    word_edits,
    words,
)
from correcteur.textdiff import levenshtein

# Four entries whose scores are computed by hand below.
ENTRIES = [
    # E1: one missing letter, fixed. lev(input, ref) = 1, lev(response, ref) = 0; ref = 21 chars.
    # Words: Il a mangé une pome . -> reference edit (4, 5, pomme), the response makes it too.
    {"input": "Il a mangé une pome.", "output": "Il a mangé une pomme.",
     "model_response": "Il a mangé une pomme.", "error_types": ["spelling"]},
    # E2: enfant->enfants (1), aller->allés (2 substitutions), a->à (1): lev(input, ref) = 4;
    # the response leaves "aller": lev(response, ref) = 2; ref = 33 chars.
    # Reference edits: (1,2,enfants) (3,4,allés) (4,5,à); response edits: (1,2,enfants) (4,5,à).
    {"input": "Les enfant sont aller a l'école.", "output": "Les enfants sont allés à l'école.",
     "model_response": "Les enfants sont aller à l'école.", "error_types": ["agreement", "accent"]},
    # E3: a clean sentence the response breaks: lev(input, ref) = 0, lev(response, ref) = 1;
    # ref = 13 chars; one proposed edit (1, 2, fais), none wanted.
    {"input": "Il fait beau.", "output": "Il fait beau.", "model_response": "Il fais beau.",
     "error_types": []},
    # E4: a clean sentence left alone; ref = 15 chars.
    {"input": "Merci beaucoup.", "output": "Merci beaucoup.",
     "model_response": "Merci beaucoup.", "error_types": []},
]


def test_hand_computed_scores():
    scores = score_entries(ENTRIES)
    assert list(scores) == [*SCORE_KEYS, "per_error_type"]
    assert (scores["n"], scores["n_with_errors"], scores["n_clean"]) == (4, 2, 2)
    assert scores["exact_match"] == 2 / 4  # E1 and E4
    assert scores["cer"] == pytest.approx((0 / 21 + 2 / 33 + 1 / 13 + 0 / 15) / 4)
    assert scores["copy_cer"] == pytest.approx((1 / 21 + 4 / 33 + 0 + 0) / 4)
    assert scores["error_reduction"] == pytest.approx(1 - (0 + 2) / (1 + 4))  # 0.6
    assert scores["harm_rate"] == 1 / 4  # E3
    assert scores["clean_preserved"] == 1 / 2  # E4 kept, E3 changed
    # tp = 1 (E1) + 2 (E2) = 3; proposed = 1 + 2 + 1 = 4; needed = 1 + 3 = 4
    assert scores["precision"] == 3 / 4
    assert scores["recall"] == 3 / 4
    assert scores["f0_5"] == pytest.approx(1.25 * 3 / (1.25 * 3 + 0.25 * 1 + 1))  # 0.75


def test_per_error_type_breakdown():
    per_type = score_entries(ENTRIES)["per_error_type"]
    assert sorted(per_type) == ["accent", "agreement", "spelling"]
    accent = per_type["accent"]  # E2 alone
    assert (accent["n"], accent["n_with_errors"], accent["n_clean"]) == (1, 1, 0)
    assert accent["error_reduction"] == pytest.approx(1 - 2 / 4)
    assert accent["clean_preserved"] is None
    assert (accent["precision"], accent["recall"]) == (1.0, 2 / 3)
    assert accent["f0_5"] == pytest.approx(1.25 * 2 / (1.25 * 2 + 0.25 * 1))  # 10/11
    assert per_type["agreement"] == accent
    assert per_type["spelling"]["error_reduction"] == 1.0
    assert per_type["spelling"]["exact_match"] == 1.0


def test_copy_predictions_do_nothing():
    scores = score_entries(copy_baseline(ENTRIES))
    assert scores["error_reduction"] == 0.0
    assert scores["harm_rate"] == 0.0
    assert scores["clean_preserved"] == 1.0
    assert scores["cer"] == scores["copy_cer"]
    assert scores["precision"] is None  # nothing proposed
    assert (scores["recall"], scores["f0_5"]) == (0.0, 0.0)


def test_reference_predictions_are_perfect():
    scores = score_entries([{**e, "model_response": e["output"]} for e in ENTRIES])
    assert scores["error_reduction"] == 1.0
    assert scores["exact_match"] == 1.0
    assert (scores["cer"], scores["harm_rate"]) == (0.0, 0.0)
    assert scores["precision"] == scores["recall"] == scores["f0_5"] == 1.0


def test_worse_response_gives_negative_reduction_and_harm():
    # lev(input, ref) = 1 (pome); the response adds Il->Ils (1) and mange->mangent (2) and
    # leaves pome (1): lev(response, ref) = 4
    entry = {"input": "Il mange une pome.", "output": "Il mange une pomme.",
             "model_response": "Ils mangent une pome."}
    scores = score_entries([entry])
    assert scores["error_reduction"] == 1 - 4 / 1
    assert scores["harm_rate"] == 1.0
    assert (scores["precision"], scores["recall"], scores["f0_5"]) == (0.0, 0.0, 0.0)
    assert "per_error_type" not in scores


def test_unicode_is_normalised():
    decomposed = "Il a e\u0301te\u0301 la\u0300."  # "Il a été là." with combining accents
    entry = {"input": decomposed, "output": "Il a été là.", "model_response": " Il a été là.\n"}
    scores = score_entries([entry])
    assert (scores["n_clean"], scores["exact_match"], scores["clean_preserved"]) == (1, 1.0, 1.0)
    assert scores["error_reduction"] is None  # no erroneous entry: undefined, not a crash


def test_user_errors():
    with pytest.raises(UserError, match="empty"):
        score_entries([])
    with pytest.raises(UserError, match="entry 1 has no text under 'model_response'"):
        score_entries([ENTRIES[0], {"input": "a", "output": "b"}])


def test_levenshtein_matches_recursive_definition():
    @functools.cache
    def reference(a: str, b: str) -> int:
        if not a or not b:
            return len(a) + len(b)
        return min(reference(a[1:], b) + 1, reference(a, b[1:]) + 1,
                   reference(a[1:], b[1:]) + (a[0] != b[0]))

    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choices("abé ", k=rng.randint(0, 9)))
        b = "".join(rng.choices("abé ", k=rng.randint(0, 9)))
        assert levenshtein(a, b) == reference(a, b) == levenshtein(b, a)


def apply_edits(source: list[str], edits: list[Edit]) -> list[str]:
    out = list(source)
    for start, end, replacement in reversed(edits):
        out[start:end] = replacement
    return out


def test_word_edits_rebuild_the_target():
    assert word_edits(words("il a bienmangé"), words("il a bien mangé")) == [Edit(2, 3, ("bien", "mangé"))]
    rng = random.Random(1)
    for _ in range(300):
        source = rng.choices(["le", "la", "chat", "chats", "a", "à"], k=rng.randint(0, 7))
        target = rng.choices(["le", "la", "chat", "chats", "a", "à"], k=rng.randint(0, 7))
        edits = word_edits(source, target)
        assert apply_edits(source, edits) == target
        assert all(e.end <= f.start for e, f in zip(edits, edits[1:], strict=False))  # in order


def test_table_and_figure(tmp_path):
    scores = score_entries(ENTRIES)
    copy = score_entries(copy_baseline(ENTRIES))
    table = format_table(scores, {"copy": copy})
    assert "error_reduction  0.600  0.000" in table
    assert "accent      1  0.500  0.000" in table
    fig = plot_error_types(scores, {"copy": copy}, save_path=tmp_path / "types.png")
    assert (tmp_path / "types.png").stat().st_size > 0
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == [0.5, 0.5, 1.0, 0.0, 0.0, 0.0]  # model then copy, types sorted


def test_score_command(tmp_path, capsys):
    data = tmp_path / "responses.json"
    data.write_text(json.dumps(ENTRIES, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "scores.json"
    assert main(["score", str(data), "--json", str(out)]) == 0
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(score_entries(ENTRIES)))
    assert "copy" in capsys.readouterr().out
    assert main(["score", str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err


def test_inputs_that_still_carry_the_task_prefix_are_refused_not_scored(tmp_path, capsys):
    """Entries never carry the dataset's prefix; an old file whose inputs do would have the prefix
    counted as an error the copy baseline leaves in."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps([{**ENTRIES[0], "input": "grammaire: " + ENTRIES[0]["input"]}, ENTRIES[1]]))
    assert main(["score", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 inputs start with 'grammaire: '" in err and "Traceback" not in err
    assert main(["judge", str(path), "--url", "http://127.0.0.1:9"]) == 2
    assert "1 of 2 inputs start with 'grammaire: '" in capsys.readouterr().err
