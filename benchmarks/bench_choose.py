"""The chooser on data the model never saw: LanguageTool's French rule examples and the project's
own test split, beside the copy baseline, the generative corrector and Grammalecte in the same
run; per error type; where the chooser overrules Grammalecte's first suggestion, examples each
way; and the latency of one 20-word sentence.

    python benchmarks/bench_choose.py --checkpoint checkpoints/RUN --test runs/RUN/data/test.json

Every entry's candidates (all sources) are weighed once by the judge the checkpoint's
choose.json names, and kept in --cache; the chooser's answers are then replayed with the tuned
margins, each candidate's margin being the same whichever others are proposed beside it, so a
re-run after a new tuning costs no model time. The LanguageTool file is read from
../shared/heldout/ (LGPL; never copied into the repository) and is only scored: nothing is
tuned on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_latency import SENTENCE
from results import command_line, write_section

from correcteur.choose import (
    SOURCES,
    chosen_text,
    load_chooser_config,
    make_scorer,
)
from correcteur.choose_tuning import save_weighings, weigh_entries, weighing_key
from correcteur.correct import Corrector
from correcteur.evaluate import answer_rows, grammalecte_rows
from correcteur.files import load_entries
from correcteur.metrics import format_table, normalize, score_entries
from correcteur.respond import respond, usable_entries
from correcteur.textdiff import levenshtein

LT_FILE = Path(__file__).resolve().parents[2] / "shared" / "heldout" / "lt_fr.tsv"
EXAMPLES = 10


def overrules(answered: list[dict], rules: list[dict]) -> tuple[list[dict], list[dict]]:
    """Entries where the chooser's answer differs from Grammalecte's first suggestion, split by
    who came closer to the reference: the chooser (it was right to overrule) or Grammalecte."""
    right, wrong = [], []
    for entry, rule in zip(answered, rules, strict=True):
        ours, theirs, reference = (normalize(t) for t in (entry["model_response"], rule["model_response"], entry["output"]))
        if ours == theirs:
            continue
        row = {**entry, "grammalecte": rule["model_response"]}
        ours_off, theirs_off = levenshtein(ours, reference), levenshtein(theirs, reference)
        (right if ours_off < theirs_off else wrong if ours_off > theirs_off else []).append(row)
    return right, wrong


def example_lines(rows: list[dict], quote: bool) -> list[str]:
    """Table rows of examples: the sentences themselves when they are ours to print (`quote`),
    else the line of the file and its rule, so that LanguageTool's sentences stay in their file."""
    if not quote:
        return [f"| line {r['line']} ({r.get('rule', '?')}) | {changed(r, 'grammalecte')} | "
                f"{changed(r, 'model_response')} | |" for r in rows[:EXAMPLES]]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    return [f"| {cell(r['input'])} | {cell(r['grammalecte'])} | {cell(r['model_response'])} | {cell(r['output'])} |"
            for r in rows[:EXAMPLES]]


def changed(row: dict, key: str) -> str:
    """Whether the system's answer is the reference, the input, or something else."""
    if normalize(row[key]) == normalize(row["output"]):
        return "the reference"
    return "left as it was" if normalize(row[key]) == normalize(row["input"]) else "another text"


def latency(corrector: Corrector, repeats: int) -> float:
    corrector.correct(SENTENCE)  # warm up (Grammalecte's and the model's first calls)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        corrector.correct(SENTENCE)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run with choose.json beside it")
    parser.add_argument("--test", required=True, help="the project's test split of that run")
    parser.add_argument("--test-limit", type=int, default=400, help="first N test entries (the README's 400)")
    parser.add_argument("--lt", default=str(LT_FILE), help="LanguageTool's pairs (TSV)")
    parser.add_argument("--cache", default="runs/bench_choose", help="folder for answers and weighings")
    parser.add_argument("--repeats", type=int, default=3, help="latency: timed runs (median)")
    parser.add_argument("--scorer", default="gemma", help="the judge to weigh with before choose.json exists")
    args = parser.parse_args()

    config = load_chooser_config(args.checkpoint)
    scorer_name = config.scorer if config else args.scorer
    corrector = Corrector.from_checkpoint(args.checkpoint, chooser=False, batch_size=32)
    scorer = make_scorer(scorer_name, corrector.model, corrector.tokenizer, corrector.meta)
    cache = Path(args.cache)
    sections = []
    for name, path, limit, key in (("LanguageTool's French rule examples", args.lt, None, "lt"),
                                   ("the project's test split", args.test, args.test_limit, "test")):
        entries = [{**e, "line": i + 2} for i, e in enumerate(usable_entries(load_entries(path)[:limit], path))]
        start = time.perf_counter()
        answered = respond(corrector, entries, cache / f"{key}_answers.json", batch_size=32)
        stored = cache / f"{key}_{scorer_name}.pkl"
        weighings = weigh_entries(scorer, answered, SOURCES, stored)
        if config is None:
            print(f"{name}: weighed into {cache}; tune the chooser (`correcteur choose`), then run again")
            continue
        chosen = [{**e, "model_response": chosen_text(w, config)} for e, w in zip(answered, weighings, strict=True)]
        save_weighings(weighings, weighing_key(scorer, answered, SOURCES), stored)  # with the combinations scored
        systems = {**answer_rows(entries, answered, corrector.guard, chooser=True), **grammalecte_rows(entries)}
        rules = systems["grammalecte"]
        table = format_table(score_entries(chosen), {k: score_entries(v) for k, v in systems.items()})
        minutes = (time.perf_counter() - start) / 60
        right, wrong = overrules(chosen, rules)
        sections += [f"### {name} ({len(entries)} entries; {minutes:.1f} min for this run, weighings reused "
                     "when cached)", "",
                     "`model`: the chooser.", "", "```", table, "```", "",
                     f"Where the chooser's answer differs from Grammalecte's first suggestion: the chooser came "
                     f"closer to the reference {len(right)} times, Grammalecte {len(wrong)} times."
                     + ("" if key == "test" else " LanguageTool's sentences are not reprinted here (LGPL; they stay in "
                        "../shared/heldout/lt_fr.tsv): each example names its line and rule, and what each system gave."),
                     "",
                     "| input | Grammalecte | chooser | reference |", "|---|---|---|---|",
                     "| **the chooser was right** | | | |", *example_lines(right, key == "test"),
                     "| **the chooser was wrong** | | | |", *example_lines(wrong, key == "test"), ""]
        print(table, flush=True)
    if config is None:
        return
    live = Corrector.from_checkpoint(args.checkpoint)
    seconds = latency(live, args.repeats)
    head = (f"On {platform.machine()}, {os.cpu_count()} CPU cores (shared with other work of the session), "
            f"torch {torch.__version__}. Checkpoint `{args.checkpoint}`; chooser: {live.chooser.description}; "
            f"margins {config.margins}, leads {config.leads}, frequency {config.frequency}, joint {config.joint}.\n\n"
            f"Latency of the 20-word sentence of `bench_latency.py` with the chooser (median of {args.repeats}, "
            f"after a warm-up): **{seconds:.2f} s**.\n\n")
    write_section("The chooser on held-out data", head + "\n".join(sections),
                  command_line("bench_choose.py", parser, args))
    print(head + "\n".join(sections))


if __name__ == "__main__":
    main()
