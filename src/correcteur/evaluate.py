"""Phase 4: answer the held-out test split and score it beside the baselines.

Every number of the model stands next to the same number for doing nothing (the input
returned unchanged), for the base model before fine-tuning and for Grammalecte, so that a
corrector that makes text worse can't hide behind an average (../shared/notes/prior-art.md:
60/100 from a judge while most outputs were worse than the input).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from correcteur.baselines import copy_baseline, grammalecte_checker, grammalecte_correct
from correcteur.correct import join_parts
from correcteur.errors import UserError
from correcteur.files import load_entries, write_json
from correcteur.guard import GUARD_FILE, checkpoint_folder, response_parts
from correcteur.metrics import DEFAULT_PREFIX, format_table, plot_error_types, score_entries


@dataclass
class EvalConfig:
    """One evaluation run; saved as config.json next to its report."""

    checkpoint: str
    test: str = "data/test.json"
    out: str = "runs/eval"
    limit: int | None = None  # first N test entries (None = all)
    batch_size: int = 32  # sentences generated together (larger batches amortise weight reads on a CPU)
    prefix: str = DEFAULT_PREFIX  # stripped from inputs (when present) before correcting and comparing
    guard: bool = True
    base_model: bool = True  # also answer with the model before fine-tuning
    grammalecte: bool = True  # when installed
    judge: bool = False
    judge_model: str = "llama3"
    judge_url: str = "http://localhost:11434"
    device: str | None = None


def responder_id(corrector) -> str:
    """Who answered: the model's name and the training step and validation loss of its
    checkpoint, so that answers from an older checkpoint are never reused."""
    meta = getattr(corrector, "meta", None) or {}
    return f"{getattr(corrector, 'name', 'model')} | step {meta.get('step')} | val_loss {meta.get('val_loss')}"


def respond(corrector, entries: list[dict], out_path: str | Path | None = None, prefix: str = "",
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
        sources = [results[i]["input"].removeprefix(prefix) for i in rows]
        for i, parts in zip(rows, corrector.answer_parts(sources), strict=True):
            results[i].update(raw_response=join_parts(parts), responder=who,
                              **({"raw_parts": [list(part) for part in parts]} if len(parts) > 1 else {}))
        if out_path is not None:
            write_json(out_path, results)
    guard = corrector.guard
    for entry in tqdm(results, desc="guarding", unit="entry", disable=not progress or guard is None):
        entry["model_response"] = join_parts(response_parts(entry, prefix), guard)
    if out_path is not None:
        write_json(out_path, results)
    return results


def grammalecte_responses(entries: list[dict], prefix: str = "") -> list[dict]:
    return [{**e, "model_response": grammalecte_correct(e["input"].removeprefix(prefix))}
            for e in tqdm(entries, desc="grammalecte", unit="entry", disable=None)]


def evaluate(config: EvalConfig) -> dict:
    """Respond, score the model and the baselines, write report.json, report.md and figures."""
    from correcteur.correct import Corrector

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(config))
    entries = load_entries(config.test)[: config.limit]
    if not entries:
        raise UserError(f"{config.test} holds no entries")

    corrector = Corrector.from_checkpoint(config.checkpoint, device=config.device, guard=config.guard,
                                          batch_size=config.batch_size)
    meta = corrector.meta
    start = time.perf_counter()
    answered = respond(corrector, entries, out / "responses.json", config.prefix, config.batch_size)
    seconds = time.perf_counter() - start

    systems = {"model": answered, "copy": copy_baseline(entries, config.prefix)}
    if config.guard:
        systems["model (no guard)"] = [{**e, "model_response": e["raw_response"]} for e in answered]
    if config.base_model and meta.get("base", {}).get("pretrained"):
        systems["base model"] = base_model_responses(meta, entries, out, config)
    if config.grammalecte and grammalecte_checker() is not None:
        systems["grammalecte"] = grammalecte_responses(entries, config.prefix)

    scores = {name: score_entries(answers, prefix=config.prefix) for name, answers in systems.items()}
    model_scores = scores.pop("model")
    report = {"config": dataclasses.asdict(config), "checkpoint_meta": _plain(meta),
              "guard": dataclasses.asdict(corrector.guard.config) if corrector.guard else None,
              "guard_tuned": (checkpoint_folder(config.checkpoint) / GUARD_FILE).is_file(),
              "n": len(entries), "seconds_responding": round(seconds, 1),
              "model": model_scores, "baselines": scores,
              "table": format_table(model_scores, scores)}
    if config.judge:
        report["judge"] = judge_summary(answered, out, config)
    if model_scores.get("per_error_type"):
        plot_error_types(model_scores, scores, save_path=out / "error_types.png")
    write_json(out / "report.json", report)
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def base_model_responses(meta: dict, entries: list[dict], out: Path, config: EvalConfig) -> list[dict]:
    """The seed's comparison: the same prompt answered by the model before fine-tuning."""
    from correcteur.correct import Corrector
    from correcteur.weights import load_base_model

    model, tokenizer, _ = load_base_model(meta["model_name"])
    corrector = Corrector(model, tokenizer, prompt_style=meta.get("prompt_style", "alpaca"),
                          device=config.device, name=f"{meta['model_name']} (base)", batch_size=config.batch_size)
    return respond(corrector, entries, out / "responses_base_model.json", config.prefix, config.batch_size)


def judge_summary(answered: list[dict], out: Path, config: EvalConfig) -> dict:
    """The LLM judge's scores when its server answers; otherwise why it was skipped."""
    from correcteur.judge import check_server, generate_model_scores, summarize_scores

    try:
        check_server(config.judge_url, config.judge_model)
    except UserError as error:
        return {"skipped": str(error)}
    scores = generate_model_scores(answered, "model_response", model=config.judge_model,
                                   url=config.judge_url, prefix=config.prefix,
                                   cache_path=out / "judge_cache.jsonl")
    return summarize_scores(scores)


def report_markdown(report: dict) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"Checkpoint: `{report['config']['checkpoint']}` ({report['checkpoint_meta'].get('model_name', '?')}); "
        f"test file: `{report['config']['test']}`, {report['n']} entries; "
        f"responses in {report['seconds_responding']} s.",
        f"Guard: {_guard_words(report)}.",
        "",
        "```",
        report["table"],
        "```",
        "",
        "error_reduction: 1 = every error fixed, 0 = no better than leaving the text alone, "
        "negative = worse. harm_rate: share of entries the system made worse than its input.",
    ]
    if "judge" in report:
        lines += ["", "## LLM judge", "", "```", json.dumps(report["judge"], indent=2, ensure_ascii=False), "```"]
    return "\n".join(lines) + "\n"


def _guard_words(report: dict) -> str:
    if not report.get("guard"):
        return "off"
    if report.get("guard_tuned"):
        return f"{report['guard']}, tuned on validation (guard.json)"
    return f"{report['guard']}, the defaults: no guard.json beside the checkpoint (untuned)"


def _plain(meta: dict) -> dict:
    """The JSON-serialisable part of checkpoint metadata."""
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}


# ----------------------------------------------------------------------------- command line


def add_respond_arguments(parser: argparse.ArgumentParser,
                          out_help: str = "JSON file to write (re-running resumes it)") -> None:
    parser.add_argument("--checkpoint", required=True, help="training run folder or its best.pt")
    parser.add_argument("--test", default="data/test.json", help="entries with input and output")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="prefix stripped from inputs when present")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences generated together")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N entries")
    parser.add_argument("--no-guard", action="store_true", help="keep the model's answers as they are")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")


def run_respond(args: argparse.Namespace) -> int:
    from correcteur.correct import Corrector

    corrector = Corrector.from_checkpoint(args.checkpoint, device=args.device, guard=not args.no_guard,
                                          batch_size=args.batch_size)
    entries = load_entries(args.test)[: args.limit]
    respond(corrector, entries, args.out, args.prefix, args.batch_size)
    print(f"{len(entries)} responses in {args.out}")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_respond_arguments(parser, out_help="report folder (report.json, report.md, figures)")
    parser.add_argument("--no-base-model", action="store_true", help="skip the base-model baseline")
    parser.add_argument("--no-grammalecte", action="store_true", help="skip the Grammalecte baseline")
    parser.add_argument("--judge", action="store_true", help="also ask the LLM judge (needs Ollama)")
    parser.add_argument("--judge-model", default="llama3", help="judge model name")
    parser.add_argument("--judge-url", default="http://localhost:11434", help="judge server")


def run_evaluate(args: argparse.Namespace) -> int:
    config = EvalConfig(checkpoint=args.checkpoint, test=args.test, out=args.out, limit=args.limit,
                        batch_size=args.batch_size, prefix=args.prefix, guard=not args.no_guard,
                        base_model=not args.no_base_model, grammalecte=not args.no_grammalecte,
                        judge=args.judge, judge_model=args.judge_model, judge_url=args.judge_url,
                        device=args.device)
    report = evaluate(config)
    print(report["table"])
    print(f"report: {Path(config.out) / 'report.md'}")
    return 0
