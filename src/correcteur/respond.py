"""Answering a split with a corrector: resumable, in batches, guarded afresh each time.

Guard tuning answers the validation split this way, and evaluation the test split; the answers
of a checkpoint are written as they come, so an interrupted run loses at most one batch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tqdm import tqdm

from correcteur.errors import UserError
from correcteur.files import load_entries, write_json
from correcteur.metrics import refuse_task_prefix
from correcteur.textdiff import Part, join_parts


def usable_entries(entries: list[dict], origin: str) -> list[dict]:
    """`entries` if every one can be answered and scored: a text `input` and a non-empty text
    `output` (an empty reference would score any answer that deletes everything as perfect),
    and no task prefix left in the input. Otherwise one message, counted by reason."""
    problems: Counter = Counter()
    for entry in entries:
        if not isinstance(entry.get("input"), str):
            problems["no text under 'input'"] += 1
        elif not isinstance(entry.get("output"), str):
            problems["no text under 'output'"] += 1
        elif not entry["output"].strip():
            problems["an empty 'output'"] += 1
    if problems:
        reasons = ", ".join(f"{count} with {reason}" for reason, count in problems.most_common())
        raise UserError(f"{origin}: {sum(problems.values())} of {len(entries)} entries cannot be used ({reasons}); "
                        "each entry needs the text to correct under 'input' and its correction under 'output', "
                        "as `python -m correcteur data` writes them")
    return refuse_task_prefix(entries, origin)


def responder_id(corrector) -> str:
    """Who answered: the model's name and the training step and validation loss of its
    checkpoint, so that answers from an older checkpoint are never reused."""
    meta = getattr(corrector, "meta", None) or {}
    return f"{getattr(corrector, 'name', 'model')} | step {meta.get('step')} | val_loss {meta.get('val_loss')}"


def respond(corrector, entries: list[dict], out_path: str | Path | None = None,
            batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Each entry with `raw_response` (the model's own answer) and `model_response` (that
    answer after the corrector's guard, when it has one); a sentence the model answered in
    parts, being too long for its context, keeps them in `raw_parts`, and is guarded by part.

    Entries are answered in batches of similar length (less padding); after each batch the
    file at `out_path` is rewritten, and a re-run keeps the raw answers it holds from the
    same checkpoint (`responder`). The guard is applied afresh, so retuned thresholds count."""
    who = responder_id(corrector)
    raw_keys = ("raw_response", "raw_parts", "responder")
    results = [{k: v for k, v in e.items() if k not in (*raw_keys, "model_response")} for e in entries]
    if out_path is not None and Path(out_path).exists():
        done = {(e["input"], e.get("output")): {k: e[k] for k in raw_keys if k in e}
                for e in load_entries(out_path) if e.get("responder") == who and "raw_response" in e}
        for entry in results:
            entry.update(done.get((entry["input"], entry.get("output")), {}))
    todo = sorted((i for i, e in enumerate(results) if "raw_response" not in e),
                  key=lambda i: len(results[i]["input"]))
    for start in tqdm(range(0, len(todo), batch_size), desc="responding", unit="batch", disable=not progress):
        rows = todo[start:start + batch_size]
        sources = [results[i]["input"] for i in rows]
        for i, parts in zip(rows, corrector.answer_parts(sources), strict=True):
            results[i].update(raw_response=join_parts(parts), responder=who,
                              **({"raw_parts": [list(part) for part in parts]} if len(parts) > 1 else {}))
        if out_path is not None:
            write_json(out_path, results)
    decide = getattr(corrector, "decide", None) or corrector.guard  # the chooser, or the guard
    for entry in tqdm(results, desc="choosing" if getattr(corrector, "chooser", None) else "guarding",
                      unit="entry", disable=not progress or decide is None):
        entry["model_response"] = join_parts(response_parts(entry), decide)
    if out_path is not None:
        write_json(out_path, results)
    return results


def response_parts(entry: dict) -> list[Part]:
    """The (part, raw answer, gap) pieces of an answered entry: the whole input, or the parts
    a sentence too long for the context was answered in."""
    if "raw_parts" in entry:
        return [tuple(part) for part in entry["raw_parts"]]
    return [(entry["input"], entry["raw_response"], "")]
