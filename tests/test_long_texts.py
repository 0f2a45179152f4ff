"""Long entries: scores, diffs and the guard stay fast and small on a 5 MB entry, and below the
documented sizes they give exactly what the plain algorithms gave (copied here, as they were
before long texts were cut at anchors, as the references)."""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import random
import re
import subprocess
import sys
import textwrap

import pytest

import correcteur.metrics as metrics
import correcteur.textdiff as textdiff
from correcteur.augment import corrupt, french_lexicon
from correcteur.data import load_embedded
from correcteur.guard import Answer, Guard, GuardConfig
from correcteur.metrics import Edit, word_edits, words
from correcteur.textdiff import (
    diff_words,
    differing_regions,
    edit_pieces,
    edits_of,
    levenshtein,
    matching_blocks,
    typo_distance,
)

# ----------------------------------------------------------------------------- the references


def reference_word_edits(source: list[str], target: list[str]) -> list[Edit]:
    n, m = len(source), len(target)
    dist = [[i + j if i == 0 or j == 0 else 0 for j in range(m + 1)] for i in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            substitute = dist[i - 1][j - 1] + (source[i - 1] != target[j - 1])
            dist[i][j] = min(substitute, dist[i - 1][j] + 1, dist[i][j - 1] + 1)
    ops = []
    i, j = n, m
    while i > 0 or j > 0:
        if i and j and dist[i][j] == dist[i - 1][j - 1] + (source[i - 1] != target[j - 1]):
            kind = "keep" if source[i - 1] == target[j - 1] else "substitute"
            i, j = i - 1, j - 1
        elif i and dist[i][j] == dist[i - 1][j] + 1:
            kind, i = "delete", i - 1
        else:
            kind, j = "insert", j - 1
        ops.append((kind, i, j))
    edits = []
    for changed, run in itertools.groupby(reversed(ops), key=lambda op: op[0] != "keep"):
        run = list(run)
        if not changed:
            continue
        pieces = [[op] for op in run] if all(op[0] == "substitute" for op in run) else [run]
        for piece in pieces:
            start, target_start = piece[0][1], piece[0][2]
            end = start + sum(kind != "insert" for kind, _, _ in piece)
            target_end = target_start + sum(kind != "delete" for kind, _, _ in piece)
            edits.append(Edit(start, end, tuple(target[target_start:target_end])))
    return edits


def reference_levenshtein(a: str, b: str) -> int:
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        left = i
        current = [left]
        for char_b, diagonal, up in zip(b, previous, previous[1:], strict=False):
            if char_a != char_b:
                if up < diagonal:
                    diagonal = up
                if left < diagonal:
                    diagonal = left
                diagonal += 1
            left = diagonal
            current.append(left)
        previous = current
    return previous[-1]


def reference_diff_words(source: str, corrected: str) -> list[tuple[str, str]]:
    old, new = re.findall(r"\S+|\s+", source), re.findall(r"\S+|\s+", corrected)
    runs = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            runs.append(("equal", "".join(new[j1:j2])))
            continue
        if i2 > i1:
            runs.append(("delete", "".join(old[i1:i2])))
        if j2 > j1:
            runs.append(("insert", "".join(new[j1:j2])))
    return runs


def reference_typo_distance(a: str, b: str) -> int:
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i]
        for j in range(1, len(b) + 1):
            best = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, rows[-2][j - 2] + 1)
            row.append(best)
        rows.append(row)
    return rows[-1][-1]


# ----------------------------------------------------------------------------- realistic pairs


@functools.cache
def corpus_lines() -> list[str]:
    return [record.output for record in load_embedded()]


def realistic_pairs(count: int, max_lines: int, seed: int) -> list[tuple[str, str, str]]:
    """(input, reference, response): sentences and paragraphs of the corpus, corrupted as the
    training data is, and a response that fixes some of the errors and adds one of its own."""
    rng, lexicon, lines = random.Random(seed), french_lexicon(), corpus_lines()
    triples = []
    for _ in range(count):
        reference = " ".join(rng.sample(lines, rng.randint(1, max_lines)))
        source, _ = corrupt(reference, rng.randint(1, 6), rng, lexicon)
        pieces = edit_pieces(source, reference)
        half = {n for n in range(len(edits_of(pieces))) if rng.random() < 0.5}
        response, _ = corrupt(textdiff.apply_edits(pieces, half), 1, rng, lexicon)
        triples.append((source, reference, response))
    return triples


def random_tokens(rng: random.Random, most: int) -> list[str]:
    return rng.choices(["le", "la", "chat", "chats", "a", "à", ","], k=rng.randint(0, most))


def assert_like_the_references(source: str, target: str) -> None:
    assert word_edits(words(source), words(target)) == reference_word_edits(words(source), words(target))
    assert levenshtein(source, target) == reference_levenshtein(source, target)
    assert diff_words(source, target) == reference_diff_words(source, target)


# ----------------------------------------------------------------------------- below the sizes: unchanged


def test_sentences_and_paragraphs_give_exactly_what_they_gave():
    for source, reference, response in realistic_pairs(150, 1, seed=0) + realistic_pairs(30, 8, seed=1):
        for target in (reference, response):
            assert_like_the_references(source, target)
        assert_like_the_references(response, reference)
        for _, removed, inserted in edits_of(edit_pieces(source, response)):
            assert typo_distance(removed, inserted) == reference_typo_distance(removed, inserted)


def test_random_pairs_give_exactly_what_they_gave():
    rng = random.Random(2)
    for _ in range(400):
        a, b = random_tokens(rng, 30), random_tokens(rng, 30)
        assert word_edits(a, b) == reference_word_edits(a, b)
        x, y = " ".join(a), "  ".join(b)
        assert levenshtein(x, y) == reference_levenshtein(x, y)
        assert diff_words(x, y) == reference_diff_words(x, y)
        assert typo_distance(x[:40], y[:40]) == reference_typo_distance(x[:40], y[:40])


def test_the_documented_sizes_choose_the_exact_path(monkeypatch):
    """Up to each limit the plain algorithm runs on the whole pair; one cell more and the pair
    is cut at anchors. The limits are counted as documented: words, less the common end, for
    word_edits; characters, less the common start and end, for levenshtein; tokens for diff_words."""
    cut = []

    def recording(module, name):
        function = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args: cut.append(name) or function(*args))

    recording(metrics, "differing_regions")
    recording(textdiff, "differing_regions")
    recording(textdiff, "_opcodes_by_region")
    monkeypatch.setattr(metrics, "EXACT_WORD_CELLS", 12)
    word_edits(["a", "b", "c", "x", "y"], ["d", "e", "f", "g", "x", "y"])  # 3 x 4 words, less "x y"
    monkeypatch.setattr(textdiff, "EXACT_CHAR_CELLS", 6)
    levenshtein("[abc]", "[de]")  # 3 x 2 characters, less the brackets
    monkeypatch.setattr(textdiff, "EXACT_DIFF_CELLS", 9)
    diff_words("a b", "c d")  # 3 x 3 tokens, the spaces counted
    assert cut == []
    word_edits(["a", "b", "c", "x", "z"], ["d", "e", "f", "g", "x", "y"])
    levenshtein("[abc]", "[def]")
    diff_words("a b", "c d e")
    assert cut == ["differing_regions", "differing_regions", "_opcodes_by_region"]


# ----------------------------------------------------------------------------- above them: cut at anchors


@pytest.fixture
def always_by_region(monkeypatch):
    """Every pair aligned region by region, each region exactly: the long-text path on short texts."""
    monkeypatch.setattr(metrics, "EXACT_WORD_CELLS", 0)
    monkeypatch.setattr(textdiff, "EXACT_CHAR_CELLS", 0)
    monkeypatch.setattr(textdiff, "EXACT_DIFF_CELLS", 0)
    monkeypatch.setattr(textdiff, "CELLS_PER_TOKEN", 10**9)


def test_by_region_realistic_pairs_align_as_the_whole_table_does(always_by_region):
    for source, reference, response in realistic_pairs(100, 8, seed=3):
        for target in (reference, response):
            assert_like_the_references(source, target)


def test_by_region_any_pair_is_still_a_valid_alignment(always_by_region):
    """On random text the anchors may not be where the best alignment goes: the edits still turn
    the input into the target, the distance is never below the true one, the diff rebuilds both."""
    rng = random.Random(4)
    for _ in range(300):
        a, b = random_tokens(rng, 40), random_tokens(rng, 40)
        rebuilt = list(a)
        for start, end, replacement in reversed(word_edits(a, b)):
            rebuilt[start:end] = replacement
        assert rebuilt == b
        x, y = " ".join(a), " ".join(b)
        assert reference_levenshtein(x, y) <= levenshtein(x, y) <= max(len(x), len(y))
        runs = diff_words(x, y)
        assert "".join(t for tag, t in runs if tag != "insert") == x
        assert "".join(t for tag, t in runs if tag != "delete") == y


def test_matching_blocks_are_shared_runs_in_order():
    rng = random.Random(5)
    cases = [(random_tokens(rng, 300), random_tokens(rng, 300)) for _ in range(30)]
    repeated = words("il a mangé une pome. les enfant sont là.")
    cases += [(repeated * 200, [w.replace("pome", "pomme") for w in repeated] * 199), ([], ["a"]),
              (["a"] * 500, ["a"] * 300), (["x"] * 3, repeated * 50)]
    for a, b in cases:
        blocks = matching_blocks(a, b)
        assert all(size > 0 and a[i:i + size] == b[j:j + size] for i, j, size in blocks)
        ends = [(0, 0), *((i + size, j + size) for i, j, size in blocks)]
        assert all(i >= end_i and j >= end_j for (end_i, end_j), (i, j, _) in zip(ends, blocks, strict=False))
        covered = sum(size for _, _, size in blocks) + sum(i2 - i1 for i1, i2, _, _ in differing_regions(a, b))
        assert covered == len(a)


def test_repeated_text_is_aligned_edit_for_edit():
    """A paragraph repeated a thousand times holds no word found once: the walk still finds
    each of its three corrections in every copy (the whole table would take 3 GB)."""
    source, target = "Les enfant sont aller a l'école hier. Il fait beau. ", "Les enfants sont allés à l'école hier. Il fait beau. "
    once, period = reference_word_edits(words(source), words(target)), len(words(source))
    assert word_edits(words(source * 1000), words(target * 1000)) == [
        Edit(start + copy * period, end + copy * period, replacement)
        for copy in range(1000) for start, end, replacement in once]
    assert len(once) == 3 and levenshtein(source * 1000, target * 1000) == 4000


def test_texts_with_nothing_in_common_are_one_replacement():
    rng = random.Random(6)
    a = [f"w{rng.randrange(10**6)}" for _ in range(3000)]
    b = [f"v{rng.randrange(10**6)}" for _ in range(3000)]
    assert word_edits(a, b) == [Edit(0, 3000, tuple(b))]
    x, y = " ".join(a), " ".join(b)
    assert levenshtein(x, y) <= max(len(x), len(y))
    assert diff_words(x, y) == [("delete", x), ("insert", y)]


# ----------------------------------------------------------------------------- the guard


def test_a_text_too_long_to_judge_is_left_as_it_is(tokenizer, monkeypatch):
    def never(self, source, responses):
        raise AssertionError("a text too long to judge was scored")

    monkeypatch.setattr(Guard, "log_probs", never)
    monkeypatch.setattr("correcteur.guard.MAX_JUDGED_CHARS", 100)
    guard = Guard(None, tokenizer, "short", GuardConfig(max_edit_ratio=1.0, min_margin=-1e9),
                  lexicon=frozenset())
    source = "Les enfant sont là. " * 6
    assert guard.decide(source, source.replace("enfant ", "enfants ")) == (source, "too long")
    assert guard.decide(source, source) == (source, "unchanged")
    assert guard.decide(source, " ") == (source, "empty")
    answer = Answer(guard, source, source.upper())
    assert answer.every == {0} and answer.text({0}) == source.upper()


def test_a_long_stretch_counts_as_far_without_its_table(tokenizer, monkeypatch):
    monkeypatch.setattr("correcteur.guard.MAX_STRETCH_CELLS", 20)
    guard = Guard(None, tokenizer, "short", GuardConfig(), lexicon=frozenset())
    answer = Answer(guard, "Il a mangé une pomme.", "Il à mangé une poire.")
    assert answer.stretch_distances == [1, 6]  # a → à; pomme. → poire. (2 typos) is 6 x 6 > 20


# ----------------------------------------------------------------------------- a 5 MB entry


def long_pair(chars: int, seed: int) -> tuple[str, str, str]:
    """(input, reference, response) of about `chars` characters: corpus lines in random order,
    half of them corrupted; the response fixes nine lines in ten."""
    rng, lexicon, lines = random.Random(seed), french_lexicon(), corpus_lines()
    sources, references, responses, size = [], [], [], 0
    while size < chars:
        line = rng.choice(lines)
        bad = corrupt(line, rng.randint(1, 2), rng, lexicon)[0] if rng.random() < 0.5 else line
        sources.append(bad)
        references.append(line)
        responses.append(bad if rng.random() < 0.1 else line)
        size += len(line) + 1
    return " ".join(sources), " ".join(references), " ".join(responses)


@pytest.fixture(scope="module")
def five_mb_entry(tmp_path_factory):
    source, reference, response = long_pair(5_000_000, seed=7)
    path = tmp_path_factory.mktemp("long") / "long.json"
    path.write_text(json.dumps([{"instruction": "Corrigez le texte suivant.", "input": source,
                                 "output": reference, "raw_response": response,
                                 "model_response": response, "error_types": ["spelling"]}],
                               ensure_ascii=False), encoding="utf-8")
    return path


# The peak is the process's own high-water mark (VmHWM): on Linux, ru_maxrss also counts the
# memory of the pytest process this one was forked from, a gigabyte late in the suite.
MEASURED = """
import json, resource, sys, time
start, cpu = time.perf_counter(), time.process_time()
{body}
try:
    status = open("/proc/self/status").read()
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
except (OSError, IndexError):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"result": result, "seconds": time.perf_counter() - start,
                   "cpu_seconds": time.process_time() - cpu, "peak_mb": peak_kb / 1024}}))
"""


def measured(body: str, *args: str) -> dict:
    """Run `body` (which sets `result`) in a fresh Python: its result, time and peak memory."""
    script = MEASURED.format(body=textwrap.dedent(body))
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    print(f"{report['seconds']:.1f} s ({report['cpu_seconds']:.1f} s of CPU), peak {report['peak_mb']:.0f} MB")
    return report


@pytest.mark.slow
def test_a_5_mb_entry_is_scored_in_seconds_and_little_memory(five_mb_entry, tmp_path):
    """Before, `score` built a table of 10^12 cells for it (killed at 21 GB)."""
    report = measured("""
        import contextlib, io
        from correcteur.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(["score", sys.argv[1], "--json", sys.argv[2]])
        result = [status, json.load(open(sys.argv[2]))]
    """, str(five_mb_entry), str(tmp_path / "scores.json"))
    status, scores = report["result"]
    assert status == 0, report
    assert scores["precision"] == 1.0 and 0.85 < scores["recall"] < 0.95, scores  # a line in ten left unfixed
    assert 0.85 < scores["error_reduction"] < 0.95, scores
    assert report["peak_mb"] < 1000 and report["cpu_seconds"] < 120, report


@pytest.mark.slow
def test_guard_tuning_on_a_5_mb_entry_leaves_it_unjudged_quickly(five_mb_entry):
    """The entry, answered whole or sentence by sentence, is too long to judge: every setting
    leaves it unchanged, without the model and in seconds (before: minutes of diffs)."""
    report = measured("""
        from correcteur.guard import Guard
        from correcteur.guard_tuning import tune_guard
        Guard.log_probs = lambda self, source, responses: [0.0] * len(responses)
        (entry,) = json.load(open(sys.argv[1]))
        sentences = entry["raw_response"].split(". ")
        parted = {**entry, "raw_parts": [[s, s, ". "] for s in sentences]}
        guard = Guard(None, None, "short", lexicon=frozenset({"les"}))
        config, grid = tune_guard(guard, [entry, parted], z=0.0)
        result = sorted({(row["error_reduction"], row["harm_rate"]) for row in grid})
    """, str(five_mb_entry))
    assert report["result"] == [[0.0, 0.0]], report  # the input, as the copy baseline: unchanged everywhere
    assert report["peak_mb"] < 1000 and report["cpu_seconds"] < 120, report


@pytest.mark.slow
def test_evaluate_on_a_5_mb_entry_in_seconds(five_mb_entry, tmp_path):
    """evaluate with a corrector that answers at once: the model (guarded, so left unchanged:
    too long), the model without its guard and the copy baseline, all scored."""
    report = measured("""
        from correcteur import evaluate as evaluation
        from correcteur.guard import Guard, GuardConfig

        class Answering:
            meta, name = {}, "scripted"
            guard = Guard(None, None, "short", GuardConfig(), lexicon=frozenset())
            def answer_parts(self, texts):
                return [[(text, answer, "")] for text in texts]

        (entry,) = json.load(open(sys.argv[1]))
        answer = entry["raw_response"]
        evaluation.Corrector.from_checkpoint = staticmethod(lambda *args, **kwargs: Answering())
        report = evaluation.evaluate(evaluation.EvalConfig(checkpoint=sys.argv[2], test=sys.argv[1], out=sys.argv[2],
                                                           base_model=False, grammalecte=False))
        result = [report["model"]["error_reduction"], report["baselines"]["model (no guard)"]["error_reduction"]]
    """, str(five_mb_entry), str(tmp_path / "eval"))
    guarded, unguarded = report["result"]
    assert guarded == 0.0 and 0.85 < unguarded < 0.95, report
    assert report["peak_mb"] < 1500 and report["cpu_seconds"] < 180, report
