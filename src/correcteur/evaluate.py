"""Phase 4: answer the held-out test split and score it beside the baselines.

Every number of the model stands next to the same number for doing nothing (the input
returned unchanged), for the base model before fine-tuning and for Grammalecte, so that a
corrector that makes text worse can't hide behind an average (../shared/notes/prior-art.md:
60/100 from a judge while most outputs were worse than the input).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from correcteur.baselines import copy_baseline, grammalecte_correct
from correcteur.candidates import grammalecte_checker
from correcteur.correct import Corrector
from correcteur.errors import UserError
from correcteur.files import load_entries, write_json
from correcteur.guard import GUARD_FILE, checkpoint_folder
from correcteur.judge import check_server, generate_model_scores, summarize_scores
from correcteur.metrics import format_table, plot_error_types, score_entries
from correcteur.respond import respond, response_parts, usable_entries
from correcteur.textdiff import join_parts
from correcteur.weights import load_recorded_base


@dataclass
class EvalConfig:
    """One evaluation run; saved as config.json next to its report."""

    checkpoint: str
    test: str = "data/test.json"
    out: str = "runs/eval"
    limit: int | None = None  # first N test entries (None = all)
    batch_size: int = 32  # sentences generated together (larger batches amortise weight reads on a CPU)
    guard: bool = True
    chooser: bool = True  # the chooser tuned for the checkpoint (choose.json), when it has one
    base_model: bool = True  # also answer with the model before fine-tuning
    grammalecte: bool = True  # when installed
    judge: bool = False
    judge_model: str = "llama3"
    judge_url: str = "http://localhost:11434"
    device: str | None = None
    decoding: str = "speculative"  # or greedy: the same answers, more forward passes
    precision: str = "float32"


def grammalecte_responses(entries: list[dict], grammar_only: bool = False) -> list[dict]:
    return [{**e, "model_response": grammalecte_correct(e["input"], grammar_only)}
            for e in tqdm(entries, desc="grammalecte", unit="entry", disable=None)]


def grammalecte_rows(entries: list[dict]) -> dict[str, list[dict]]:
    """Grammalecte's first suggestion for every error it flags, and for its grammar rules only."""
    return {"grammalecte": grammalecte_responses(entries),
            "grammalecte (grammar rules only)": grammalecte_responses(entries, grammar_only=True)}


def answer_rows(entries: list[dict], answered: list[dict], guard, chooser: bool, raw: bool = True
                ) -> dict[str, list[dict]]:
    """The rows every report sets beside the corrector's: the copy baseline, the generative
    corrector's own guarded answers (when a chooser answered instead), and the model's raw ones."""
    rows = {"copy": copy_baseline(entries)}
    if chooser and guard is not None:
        rows["model, generative (guarded)"] = [{**e, "model_response": join_parts(response_parts(e), guard)}
                                               for e in answered]
    if raw:
        rows["model (no guard)"] = [{**e, "model_response": e["raw_response"]} for e in answered]
    return rows


def evaluate(config: EvalConfig) -> dict:
    """Respond, score the model and the baselines, write report.json, report.md and figures."""
    entries = usable_entries(load_entries(config.test)[: config.limit], config.test)
    if not entries:
        raise UserError(f"{config.test} holds no entries")
    corrector = Corrector.from_checkpoint(config.checkpoint, device=config.device, guard=config.guard,
                                          batch_size=config.batch_size, decoding=config.decoding,
                                          precision=config.precision, chooser=config.chooser)
    out = Path(config.out)  # made only once the test file and the checkpoint are known to be usable
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(config))
    meta = corrector.meta
    start = time.perf_counter()
    answered = respond(corrector, entries, out / "responses.json", config.batch_size)
    seconds = time.perf_counter() - start

    chooser = getattr(corrector, "chooser", None)
    systems = {"model": answered, **answer_rows(entries, answered, corrector.guard, chooser is not None,
                                                raw=config.guard or chooser is not None)}
    if config.base_model and meta.get("base", {}).get("pretrained"):
        systems["base model"] = base_model_responses(meta, entries, out, config)
    if config.grammalecte and grammalecte_checker() is not None:
        systems.update(grammalecte_rows(entries))

    scores = {name: score_entries(answers) for name, answers in systems.items()}
    model_scores = scores.pop("model")
    report = {"config": dataclasses.asdict(config), "checkpoint_meta": _plain(meta),
              "guard": dataclasses.asdict(corrector.guard.config) if corrector.guard else None,
              "chooser": ({**dataclasses.asdict(chooser.config), "described": chooser.description}
                          if chooser else None),
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
    model, tokenizer, _ = load_recorded_base(meta)
    corrector = Corrector(model, tokenizer, prompt_style=meta.get("prompt_style", "alpaca"),
                          device=config.device, name=f"{meta['model_name']} (base)", batch_size=config.batch_size,
                          input_prefix=meta.get("input_prefix", ""), decoding=config.decoding)
    return respond(corrector, entries, out / "responses_base_model.json", config.batch_size)


def judge_summary(answered: list[dict], out: Path, config: EvalConfig) -> dict:
    """The LLM judge's scores when its server answers; otherwise why it was skipped."""
    try:
        check_server(config.judge_url, config.judge_model)
    except UserError as error:
        return {"skipped": str(error)}
    try:
        scores = generate_model_scores(answered, "model_response", model=config.judge_model,
                                       url=config.judge_url, cache_path=out / "judge_cache.jsonl")
    except UserError as error:  # the reference-based report is still written; a re-run resumes the judge
        print(f"the judge failed, the report is written without it: {error}")
        return {"failed": str(error)}
    return summarize_scores(scores)


def report_markdown(report: dict) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"Checkpoint: `{report['config']['checkpoint']}` ({report['checkpoint_meta'].get('model_name', '?')}); "
        f"test file: `{report['config']['test']}`, {report['n']} entries; "
        f"responses in {report['seconds_responding']} s.",
        f"Guard: {_guard_words(report)}.",
        f"Corrector: {_chooser_words(report)}.",
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


def _chooser_words(report: dict) -> str:
    chooser = report.get("chooser")
    if not chooser:
        return "generative (the model's own answers, guarded): no choose.json beside the checkpoint"
    return (f"the chooser (rules, lexicon and the model propose, {chooser['scorer']} disposes; margins tuned "
            f"on validation, choose.json): {chooser['described']}")


def _guard_words(report: dict) -> str:
    if not report.get("guard"):
        return "off"
    if report.get("guard_tuned"):
        return f"{report['guard']}, tuned on validation (guard.json)"
    return f"{report['guard']}, the defaults: no guard.json beside the checkpoint (untuned)"


def _plain(meta: dict) -> dict:
    """The JSON-serialisable part of checkpoint metadata."""
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}
