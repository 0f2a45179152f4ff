"""How long one 20-word sentence takes to correct, end to end through `Corrector`.

A randomly initialised model of gpt2-small's size never writes end-of-text, so it always
generates its whole budget (1.5 × input tokens + 8): an upper bound for a trained model of
that size, which stops after about as many tokens as the input. `--checkpoint` adds the row of
a trained run (it stops when it is done). Writes the "## Correction latency" section of
benchmarks/RESULTS.md.

    python benchmarks/bench_latency.py [--model gpt2-small] [--checkpoint checkpoints/RUN] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from results import write_section

from correcteur.correct import Corrector
from correcteur.model import GPTModel, gpt2_config
from correcteur.prompt import correction_prompt
from correcteur.tokenizer import get_tokenizer

SENTENCE = ("Hier soir, les enfant de mes voisins sont aller jouer au parc malgré la pluie "
            "qui tombé depuis le matin.")


def measure(corrector: Corrector, label: str, repeats: int) -> dict:
    """Wall-clock seconds of `correct(SENTENCE)` after one warm-up, and the generation steps
    (forward calls) each run took."""
    calls = []
    hook = corrector.model.register_forward_hook(lambda *_: calls.append(1))
    corrector.correct(SENTENCE)
    times, steps = [], []
    for _ in range(repeats):
        calls.clear()
        start = time.perf_counter()
        corrector.correct(SENTENCE)
        times.append(time.perf_counter() - start)
        steps.append(len(calls))
    hook.remove()
    prompt = correction_prompt(SENTENCE, corrector.prompt_style, corrector.input_prefix)
    return {"label": label, "prompt_style": corrector.prompt_style,
            "cache": "on" if corrector.use_cache else "off", "prompt_tokens": len(corrector.tokenizer.encode(prompt)),
            "steps": max(steps), "median": statistics.median(times), "best": min(times)}


def table(rows: list[dict]) -> str:
    lines = ["| model | prompt | KV cache | prompt tokens | steps | median s | best s | ms/step |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['prompt_style']} | {r['cache']} | {r['prompt_tokens']} | "
                     f"{r['steps']} | {r['median']:.2f} | {r['best']:.2f} | {1000 * r['best'] / r['steps']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-small", help="GPT-2 size of the random model")
    parser.add_argument("--checkpoint", help="also time a trained run (folder or best.pt), guard off")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (after a warm-up)")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    tokenizer = get_tokenizer("gpt2")
    model = GPTModel(gpt2_config(args.model))
    label = f"random {args.model}"
    print(f"{SENTENCE!r}: {len(SENTENCE.split())} words, {len(tokenizer.encode(SENTENCE))} GPT-2 tokens",
          flush=True)
    rows = []
    for style, use_cache, repeats in [("alpaca", True, args.repeats), ("short", True, args.repeats),
                                      ("alpaca", False, 1)]:
        corrector = Corrector(model, tokenizer, prompt_style=style, device="cpu", name=label,
                              use_cache=use_cache)
        rows.append(measure(corrector, label, repeats))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.checkpoint:
        corrector = Corrector.from_checkpoint(args.checkpoint, device="cpu", guard=False)
        rows.append(measure(corrector, corrector.name, args.repeats))
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    body = "\n\n".join([
        f"On {platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"Sentence ({len(SENTENCE.split())} words, {len(tokenizer.encode(SENTENCE))} GPT-2 tokens): "
        f"“{SENTENCE}”",
        table(rows),
        "`steps` counts forward calls: one per new token (plus the one that produces end-of-text). "
        "A random model never stops, so its rows are the worst case: its whole budget of "
        "1.5 × input tokens + 8. Greedy decoding, batch of one sentence, float32, guard off.",
    ])
    write_section("Correction latency", body, "python " + " ".join(["benchmarks/bench_latency.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
