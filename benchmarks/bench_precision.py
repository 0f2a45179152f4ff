"""The lean CPU path: a trained checkpoint in float32, bfloat16 and dynamic int8, side by side.

For each precision: the seconds of one forward pass (one new token, a speculative pass of 11,
a prefill of a batch), how often its greedy choice agrees with float32's on the validation
answers (teacher forcing: the reference answer is fed, every position compared) and, with
`--guarded N`, the guarded metrics of its answers to the first N validation entries. A
precision may become the CPU default only if those stay within 0.01 of float32's. Writes the
"## CPU precision" section of benchmarks/RESULTS.md.

    python benchmarks/bench_precision.py --checkpoint checkpoints/RUN --val data/val.json [--guarded 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from results import command_line, write_section

from correcteur.checkpoint import load_for_inference
from correcteur.correct import Corrector
from correcteur.files import load_entries
from correcteur.metrics import score_entries
from correcteur.precision import PRECISIONS, with_precision
from correcteur.prompt import correction_prompt
from correcteur.respond import respond

SHAPES = [(1, 1, "1 token, batch 1"), (1, 11, "11 tokens, batch 1"), (24, 60, "prefill 24 × 60")]


def pass_seconds(model, batch: int, new: int, repeats: int) -> float:
    """Best seconds of a forward pass of `new` tokens per row after 60 cached ones (none for a prefill)."""
    past = 0 if new == 60 else 60
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            cache = model.new_cache()
            if past:
                model(torch.randint(0, 1000, (batch, past)), cache=cache, only_last=True)
            ids = torch.randint(0, 1000, (batch, new))
            start = time.perf_counter()
            model(ids, cache=cache, logits_at=torch.ones(batch, new, dtype=torch.bool))
            best = min(best, time.perf_counter() - start)
    return best


def agreement(model, reference, sequences: list[list[int]]) -> float:
    same = total = 0
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq])
            same += int((model(ids).argmax(-1) == reference(ids).argmax(-1)).sum())
            total += len(seq)
    return same / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained run (folder or best.pt)")
    parser.add_argument("--val", required=True, help="its validation split")
    parser.add_argument("--agreement-entries", type=int, default=20, help="entries for the agreement column")
    parser.add_argument("--guarded", type=int, default=0, help="also score the guarded answers of N entries")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    reference, tokenizer, meta = load_for_inference(args.checkpoint)
    reference.eval()
    entries = load_entries(args.val)
    style, prefix = meta.get("prompt_style", "alpaca"), meta.get("input_prefix", "")
    sequences = [tokenizer.encode(correction_prompt(e["input"], style, prefix) + e["output"])
                 for e in entries[:args.agreement_entries]]
    header = "| precision | " + " | ".join(f"{label} (ms)" for *_, label in SHAPES) + " | agrees with float32 |"
    lines = [header, "|---|" + "---:|" * (len(SHAPES) + 1)]
    guarded = ["| precision | error_reduction | harm_rate | clean_preserved |", "|---|---:|---:|---:|"]
    for precision in PRECISIONS:
        model = with_precision(load_for_inference(args.checkpoint)[0], precision).eval()
        times = [1000 * pass_seconds(model, b, n, args.repeats) for b, n, _ in SHAPES]
        share = agreement(model, reference, sequences)
        lines.append(f"| {precision} | " + " | ".join(f"{t:.0f}" for t in times) + f" | {share:.3f} |")
        print(lines[-1], flush=True)
        if args.guarded:
            corrector = Corrector.from_checkpoint(args.checkpoint, device="cpu", precision=precision, chooser=False)
            scores = score_entries(respond(corrector, entries[:args.guarded], progress=False))
            guarded.append(f"| {precision} | {scores['error_reduction']:.3f} | {scores['harm_rate']:.3f} | "
                           f"{scores['clean_preserved']:.3f} |")
            print(guarded[-1], flush=True)
        del model

    body = "\n\n".join([
        f"On {platform.machine()}, {os.cpu_count()} CPU cores shared with other work of the session, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}. Checkpoint `{args.checkpoint}` "
        f"({meta.get('model_name')}).",
        "\n".join(lines),
        f"`agrees with float32`: the share of positions where the greedy choice is float32's, the "
        f"reference answers of the first {len(sequences)} validation entries fed (teacher forcing).",
        *([f"Guarded metrics on the first {args.guarded} validation entries:\n\n" + "\n".join(guarded)]
          if args.guarded else ["Guarded metrics on validation: not measured in this run (`--guarded N`)."]),
    ])
    write_section("CPU precision", body, command_line("bench_precision.py", parser, args))


if __name__ == "__main__":
    main()
