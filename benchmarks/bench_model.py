"""Our GPTModel against transformers' GPT2LMHeadModel, same weights, same batch, one process.

Measures a training step (forward + backward + AdamW) in tokens/s and greedy generation of
128 new tokens with and without the KV cache, then prints ratios and writes them into the
"## Model speed" section of benchmarks/RESULTS.md.

    python benchmarks/bench_model.py [--layers 12 --dim 768 --heads 12 --batch 4 --seq 128]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch
from results import write_section
from transformers import GPT2Config, GPT2LMHeadModel

from correcteur.generate import generate
from correcteur.weights import gpt2_from_directory


def best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` runs after one warm-up: the least noisy estimate on a shared CPU."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def train_step(model, batch: torch.Tensor, optimizer: torch.optim.Optimizer, hf: bool) -> None:
    logits = model(batch).logits if hf else model(batch)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    hf_config = GPT2Config(n_layer=args.layers, n_embd=args.dim, n_head=args.heads, n_positions=1024)
    hf = GPT2LMHeadModel(hf_config)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = gpt2_from_directory(folder)
    batch = torch.randint(0, hf_config.vocab_size, (args.batch, args.seq))
    tokens = args.batch * args.seq

    rows = []
    for name, model, is_hf in (("ours", ours, False), ("transformers", hf, True)):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        seconds = best_time(lambda m=model, o=optimizer, h=is_hf: train_step(m, batch, o, h), args.repeats)
        rows.append(("training step", name, tokens / seconds))

    prompt = batch[:1, :16]
    ours.eval()
    hf.eval()
    with torch.no_grad():
        new = args.new_tokens
        cached = best_time(lambda: generate(ours, prompt, new, 1024, use_cache=True), args.repeats)
        uncached = best_time(lambda: generate(ours, prompt, new, 1024, use_cache=False), 1)
        hf_gen = best_time(lambda: hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                               pad_token_id=0), args.repeats)
    label = f"greedy {new} tokens"
    rows += [(f"{label}, KV cache", "ours", new / cached),
             (f"{label}, no cache", "ours", new / uncached),
             (f"{label}, KV cache", "transformers", new / hf_gen)]

    train_ratio = rows[0][2] / rows[1][2]
    table = [
        f"Config: {args.layers} layers, {args.dim} dims, {args.heads} heads "
        f"({sum(p.numel() for p in ours.parameters()) / 1e6:.0f}M parameters), batch {args.batch} × {args.seq} tokens; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}.",
        "",
        "| measurement | model | tokens/s |",
        "|---|---|---:|",
        *[f"| {what} | {who} | {rate:,.1f} |" for what, who, rate in rows],
        "",
        "| ratio | value | target |",
        "|---|---:|---:|",
        f"| training, ours / transformers | {train_ratio:.2f}× | ≥ 1.0× |",
        f"| generation with cache, ours / transformers `generate` | {cached and hf_gen / cached:.2f}× | ≥ 1.0× |",
        f"| ours, cache / no cache | {uncached / cached:.2f}× | ≥ 3× |",
    ]
    print("\n".join(table))
    write_section("Model speed", "\n".join(table), command="python benchmarks/bench_model.py")


if __name__ == "__main__":
    main()
