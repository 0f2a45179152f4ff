"""How long correcting takes, greedy decoding with the KV cache against speculative decoding.

Four tables, in one run, with the same outputs asserted or counted:
1. one 20-word sentence, batch of one, end to end through `Corrector` (guard off): a random
   gpt2-small (it never writes end-of-text, so it generates its whole budget, and copies nothing,
   so drafts are rejected: the cost of drafting) and, with `--checkpoint`, a trained run;
2. with `--checkpoint`, throughput over the first `--sentences` entries of the run's test split,
   as `respond` answers them (sorted by length, batches of `--batch-size`), beside the prompts'
   forward passes alone (the floor under any decoding), with the tokens accepted per forward
   pass overall and per error type;
3. with `--checkpoint`, the trained weights exported to `transformers`: its
   `generate(prompt_lookup_num_tokens=10)` and greedy `generate` against ours, prompt by
   prompt, and ours batched, on the sentence and `--hf-sentences` - 1 test entries;
4. a random gpt2-small in `transformers`' GPT2LMHeadModel and in ours, the same four ways
   prompt by prompt (the cost of drafting for a model that copies nothing).
Writes the "## Correction latency" section of benchmarks/RESULTS.md.

    python benchmarks/bench_latency.py [--checkpoint checkpoints/RUN] [--test data/test.json]
        [--sentences 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from results import command_line, write_section

from correcteur.correct import Corrector
from correcteur.files import load_entries
from correcteur.generate import DecodingStats, generate, generate_speculative, left_pad
from correcteur.model import GPTModel, gpt2_config
from correcteur.prompt import correction_prompt
from correcteur.tokenizer import get_tokenizer
from correcteur.weights import gpt2_from_directory

SENTENCE = ("Hier soir, les enfant de mes voisins sont aller jouer au parc malgré la pluie "
            "qui tombé depuis le matin.")


def timed(call, repeats: int) -> tuple[object, list[float]]:
    """The result of `call()` and the seconds of `repeats` runs after a warm-up."""
    result = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return result, times


def counting(model) -> list:
    calls: list = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def sentence_rows(corrector: Corrector, label: str, repeats: int) -> list[dict]:
    """Greedy then speculative on SENTENCE, batch of one; the answers must be the same."""
    calls = counting(corrector.model)
    rows, answers = [], []
    prompt = correction_prompt(SENTENCE, corrector.prompt_style, corrector.input_prefix)
    for decoding in ("greedy", "speculative"):
        corrector.decoding, corrector.stats = decoding, DecodingStats()
        answer, times = timed(lambda: corrector.correct(SENTENCE), repeats)
        answers.append(answer)
        passes = len(calls) // (repeats + 1)
        calls.clear()
        rows.append({"label": label, "prompt_style": corrector.prompt_style, "decoding": decoding,
                     "prompt_tokens": len(corrector.tokenizer.encode(prompt)), "passes": passes,
                     "tokens_per_pass": corrector.stats.tokens_per_pass() if decoding == "speculative" else 1.0,
                     "median": statistics.median(times), "best": min(times)})
        print(sentence_table(rows[-1:]).splitlines()[-1], flush=True)
    assert answers[0] == answers[1], f"speculative decoding changed the answer: {answers}"
    return rows


def sentence_table(rows: list[dict]) -> str:
    lines = ["| model | prompt | decoding | prompt tokens | forward passes | tokens/pass | median s | best s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['prompt_style']} | {r['decoding']} | {r['prompt_tokens']} | "
                     f"{r['passes']} | {r['tokens_per_pass']:.2f} | {r['median']:.2f} | {r['best']:.2f} |")
    return "\n".join(lines)


def throughput(corrector: Corrector, entries: list[dict], batch_size: int) -> tuple[str, list[str]]:
    """Greedy and speculative answers of every entry (one pass each, no warm-up: minutes),
    their speeds, and the tokens accepted per pass by error type."""
    entries = sorted(entries, key=lambda e: len(e["input"]))  # as `respond` batches them: less padding
    texts = [e["input"] for e in entries]
    corrector.batch_size = batch_size
    lines = ["| decoding | sentences | batch | seconds | sentences/s | tokens/pass |", "|---|---:|---:|---:|---:|---:|"]
    floor = prompt_seconds(corrector, texts, batch_size)
    lines.append(f"| the prompts' forward passes alone | {len(texts)} | {batch_size} | {floor:.1f} | "
                 f"{len(texts) / floor:.2f} | — |")
    print(lines[-1], flush=True)
    answers, seconds = {}, {}
    for decoding in ("greedy", "speculative"):
        corrector.decoding, corrector.stats = decoding, DecodingStats()
        start = time.perf_counter()
        answers[decoding] = corrector.correct_batch(texts)
        seconds[decoding] = time.perf_counter() - start
        per_pass = corrector.stats.tokens_per_pass() if decoding == "speculative" else 1.0
        lines.append(f"| {decoding} | {len(texts)} | {batch_size} | {seconds[decoding]:.1f} | "
                     f"{len(texts) / seconds[decoding]:.2f} | {per_pass:.2f} |")
        print(lines[-1], flush=True)
    same = sum(a == b for a, b in zip(answers["greedy"], answers["speculative"], strict=True))
    assert same == len(texts), f"speculative decoding changed {len(texts) - same} answers"
    stats = corrector.stats
    assert len(stats.tokens) == len(texts), "one generated row per entry (no blank or cut entry)"
    by_type: dict[str, list[int]] = defaultdict(list)
    for row, entry in enumerate(entries):  # rows come back in the entries' order
        for kind in sorted(set(entry.get("error_types") or ["none (clean)"])):
            by_type[kind].append(row)
    type_lines = ["| error type | entries | tokens/pass |", "|---|---:|---:|"]
    for kind, rows in sorted(by_type.items()):
        tokens, passes = sum(stats.tokens[r] for r in rows), sum(stats.passes[r] for r in rows)
        type_lines.append(f"| {kind} | {len(rows)} | {tokens / passes:.2f} |")
    speedup = seconds["greedy"] / seconds["speculative"]
    bound = seconds["greedy"] / floor
    body = "\n".join(lines) + (
        f"\n\nSpeculative / greedy: **{speedup:.2f}×** sentences/s, the {same} answers identical. Every "
        f"decoding reads the prompts first, in passes as costly as those of the first row: no decoding, "
        f"lossless or not, can be more than {bound:.2f}× faster than greedy on these batches.") \
        + "\n\n" + "\n".join(type_lines)
    return body, answers["speculative"]


@torch.no_grad()
def prompt_seconds(corrector: Corrector, texts: list[str], batch_size: int) -> float:
    """Seconds to read the prompts of `texts` once, in batches of `batch_size` (left-padded,
    into a fresh cache, last logits only): what greedy and speculative decoding both pay first."""
    prompts = [corrector._encode(t).prompt_ids for t in texts]  # the prompts `Corrector` feeds
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[first:first + batch_size], corrector.tokenizer.eot_token)
        corrector.model(ids, cache=corrector.model.new_cache(), attention_mask=mask, only_last=True)
    return time.perf_counter() - start


def against_transformers(prompts: list[list[int]], new_tokens: int, repeats: int, seed: int) -> str:
    """A random gpt2-small in transformers, the same weights in ours (through weights.py's hub
    mapping); each prompt alone, greedy, `new_tokens` tokens (no end-of-text)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024)).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = gpt2_from_directory(Path(folder)).eval()
    hf.generation_config.pad_token_id = 50256
    runs = {
        "transformers generate(prompt_lookup_num_tokens=10)": lambda p: hf.generate(
            p, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            prompt_lookup_num_tokens=10, attention_mask=torch.ones_like(p))[0, p.shape[1]:].tolist(),
        "transformers generate (greedy)": lambda p: hf.generate(
            p, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            attention_mask=torch.ones_like(p))[0, p.shape[1]:].tolist(),
        "ours generate_speculative": lambda p: generate_speculative(
            ours, p, new_tokens, 1024, sources=[p[0].tolist()])[0, p.shape[1]:].tolist(),
        "ours generate (greedy, KV cache)": lambda p: generate(ours, p, new_tokens, 1024)[0, p.shape[1]:].tolist(),
    }
    lines = ["| decoding | prompts | new tokens | seconds (best) | tokens/s |", "|---|---:|---:|---:|---:|"]
    outputs, speed = {}, {}
    with torch.no_grad():
        for name, run in runs.items():
            def every(run=run):
                return [run(torch.tensor([p])) for p in prompts]
            outputs[name], times = timed(every, repeats)
            speed[name] = len(prompts) * new_tokens / min(times)
            lines.append(f"| {name} | {len(prompts)} | {new_tokens} | {min(times):.2f} | {speed[name]:.1f} |")
            print(lines[-1], flush=True)
    reference = outputs["ours generate (greedy, KV cache)"]
    differing = {name: sum(a != b for a, b in zip(out, reference, strict=True)) for name, out in outputs.items()}
    names = list(runs)
    return "\n".join(lines) + (
        f"\n\nOurs speculative / transformers prompt lookup: **{speed[names[2]] / speed[names[0]]:.2f}×** tokens/s. "
        f"Prompts whose tokens differ from ours greedy: {differing}.")


def against_transformers_trained(corrector: Corrector, texts: list[str], repeats: int) -> str:
    """The trained corrector's own weights, exported with `export_hf` and loaded by
    `transformers` (LlamaForCausalLM for SmolLM2): prompt lookup against our speculative
    decoding on the same prompts, each alone, to end-of-text, the answers asserted identical."""
    from transformers import AutoModelForCausalLM

    from correcteur.export import export_hf

    model, tokenizer, meta = corrector.model, corrector.tokenizer, corrector.meta
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, tokenizer, meta, folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eot = tokenizer.eot_token
    stops = sorted(getattr(tokenizer, "special_ids", {eot}))
    jobs = []
    for text in texts:
        prompt = correction_prompt(text, corrector.prompt_style, corrector.input_prefix)
        source = tokenizer.encode(text)
        jobs.append((torch.tensor([tokenizer.encode(prompt)]), source, int(corrector.max_new_tokens_factor * len(source)) + 8))
    hf_options = {"do_sample": False, "eos_token_id": stops, "pad_token_id": eot}
    runs = {
        "transformers generate(prompt_lookup_num_tokens=10)": lambda p, s, n: hf.generate(
            p, max_new_tokens=n, prompt_lookup_num_tokens=10, attention_mask=torch.ones_like(p), **hf_options),
        "transformers generate (greedy)": lambda p, s, n: hf.generate(
            p, max_new_tokens=n, attention_mask=torch.ones_like(p), **hf_options),
        "ours generate_speculative": lambda p, s, n: generate_speculative(
            model, p, n, model.context_length, sources=[s], eos_id=eot, stop_ids=set(stops)),
        "ours generate (greedy, KV cache)": lambda p, s, n: generate(
            model, p, n, model.context_length, eos_id=eot, stop_ids=set(stops)),
    }

    def answer(row: list[int]) -> list[int]:
        """The new tokens up to the first stop (ours leave the stop out, transformers keeps it)."""
        return row[:next((i for i, t in enumerate(row) if t in stops), len(row))]

    def one_by_one(run):
        return lambda: [answer(run(p, s, n)[0, p.shape[1]:].tolist()) for p, s, n in jobs]

    def batched():  # transformers refuses a batch for prompt lookup ("only supported for batch_size = 1")
        ids, mask = left_pad([p[0].tolist() for p, _, _ in jobs], eot)
        out = generate_speculative(model, ids, max(n for _, _, n in jobs), model.context_length,
                                   sources=[s for _, s, _ in jobs], eos_id=eot, attention_mask=mask,
                                   stop_ids=set(stops))
        return [answer(row)[:n] for row, (_, _, n) in zip(out[:, ids.shape[1]:].tolist(), jobs, strict=True)]

    calls = {name: one_by_one(run) for name, run in runs.items()}
    calls[f"ours generate_speculative, the {len(jobs)} prompts in one batch"] = batched
    lines = ["| decoding | prompts | new tokens | seconds (best) | tokens/s |", "|---|---:|---:|---:|---:|"]
    outputs, speed = {}, {}
    with torch.no_grad():
        for name, call in calls.items():
            outputs[name], times = timed(call, repeats)
            tokens = sum(map(len, outputs[name]))
            speed[name] = tokens / min(times)
            lines.append(f"| {name} | {len(jobs)} | {tokens} | {min(times):.2f} | {speed[name]:.1f} |")
            print(lines[-1], flush=True)
    reference = outputs["ours generate (greedy, KV cache)"]
    differing = {name: sum(a != b for a, b in zip(out, reference, strict=True)) for name, out in outputs.items()}
    names = list(calls)
    return "\n".join(lines) + (
        f"\n\nOurs speculative / transformers prompt lookup: **{speed[names[2]] / speed[names[0]]:.2f}×** tokens/s "
        f"prompt by prompt, **{speed[names[4]] / speed[names[0]]:.2f}×** with ours batched (transformers' prompt "
        f"lookup takes one prompt at a time); ours greedy / transformers greedy: {speed[names[3]] / speed[names[1]]:.2f}×. "
        f"Answers (new tokens before the first stop) that differ from ours greedy: {differing}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-small", help="GPT-2 size of the random model")
    parser.add_argument("--checkpoint", help="also time a trained run (folder or best.pt), guard off")
    parser.add_argument("--test", help="test split: the throughput table (with --checkpoint) and prompts for "
                        "the transformers table")
    parser.add_argument("--sentences", type=int, default=400, help="test entries for the throughput table")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences generated together there")
    parser.add_argument("--hf-prompts", type=int, default=4, help="prompts for the random-weights transformers table")
    parser.add_argument("--hf-sentences", type=int, default=16,
                        help="sentences for the trained-weights transformers table (with --checkpoint)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (after a warm-up)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); on cores other work shares, 1 waits least")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = get_tokenizer("gpt2")
    model = GPTModel(gpt2_config(args.model))
    print(f"{SENTENCE!r}: {len(SENTENCE.split())} words, {len(tokenizer.encode(SENTENCE))} GPT-2 tokens", flush=True)
    rows = sentence_rows(Corrector(model, tokenizer, prompt_style="alpaca", device="cpu",
                                   name=f"random {args.model}"), f"random {args.model}", args.repeats)
    sections = []
    if args.checkpoint:
        corrector = Corrector.from_checkpoint(args.checkpoint, device="cpu", guard=False, chooser=False)
        rows += sentence_rows(corrector, corrector.name, args.repeats)
        if args.test:
            entries = load_entries(args.test)[:args.sentences]
            body, _ = throughput(corrector, entries, args.batch_size)
            sections.append(f"Throughput on the first {len(entries)} entries of `{args.test}`, as `respond` "
                            f"answers them ({corrector.name}, guard off):\n\n{body}")
    prompts = [tokenizer.encode(correction_prompt(text, "alpaca"))
               for text in [SENTENCE, *(e["input"] for e in (load_entries(args.test)[:args.hf_prompts - 1]
                                                             if args.test else []))]]
    hf_table = against_transformers(prompts, 48, max(1, args.repeats - 1), args.seed)
    if args.checkpoint:
        texts = [SENTENCE, *(e["input"] for e in (load_entries(args.test)[:args.hf_sentences - 1] if args.test else []))]
        trained_table = against_transformers_trained(corrector, texts, max(1, args.repeats - 1))
        sections.append(f"Against `transformers` on the trained weights ({corrector.name}, exported by `export_hf` "
                        f"and loaded as a Hugging Face model; the sentence and {len(texts) - 1} test entries, each "
                        f"alone, to end-of-text):\n\n{trained_table}")

    body = "\n\n".join([
        f"On {platform.machine()}, {os.cpu_count()} CPU cores shared with other work of the session, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, Python {platform.python_version()}.",
        f"Sentence ({len(SENTENCE.split())} words, {len(tokenizer.encode(SENTENCE))} GPT-2 tokens): “{SENTENCE}”",
        sentence_table(rows),
        "Batch of one sentence, float32, guard off, through `Corrector.correct`; each pair of rows "
        "gave the same answer. `tokens/pass` counts the new tokens (end-of-text included) per "
        "forward pass: 1 for greedy decoding, 1 + the draft tokens accepted for speculative "
        "decoding. A random model copies nothing: its drafts are rejected and it pays for them.",
        *sections,
        "Against `transformers` (a random gpt2-small, the same weights in ours; each prompt alone, "
        "48 new tokens, no end-of-text; alpaca prompts):\n\n" + hf_table,
    ])
    write_section("Correction latency", body, command_line("bench_latency.py", parser, args))


if __name__ == "__main__":
    main()
