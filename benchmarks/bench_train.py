"""Training throughput: our loop (GPTModel + AdamW, `train.train_step`) against a plain
transformers loop (GPT2LMHeadModel + AdamW), same shape, same batches, one process.

Both loops do what a fine-tuning step does: forward, masked cross-entropy, backward, gradient
clipping at 1.0, AdamW(lr=5e-5, weight_decay=0.1). The batches are instruction-shaped:
`custom_collate_fn` pads random examples of 96-128 tokens and masks their 40-token prompts; the
transformers loop gets the same tokens as `labels` (it shifts them itself). Steps of the two
loops alternate, so a neighbour's load on a shared CPU hits both alike; the fastest step of
each counts. Writes the "## Training throughput" section of benchmarks/RESULTS.md.

    python benchmarks/bench_train.py [--layers 6 --dim 384 --heads 6 --batch 8 --steps 3]

The default shape is weights.py's `gpt2-cpu` (6 layers, 384 dims: 30M parameters with GPT-2's
vocabulary), which runs in about two minutes on 2 shared cores; gpt2-small's shape
(`--layers 12 --dim 768 --heads 12`) takes about five there.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import psutil
import torch
from results import write_section
from transformers import GPT2Config, GPT2LMHeadModel

from correcteur.model import GPTModel
from correcteur.train import TrainState, custom_collate_fn, train_step

IGNORE = -100


def instruction_batch(batch: int, vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.randint(96, 129, (batch,), generator=generator).tolist()
    examples = [(torch.randint(0, vocab - 1, (n,), generator=generator).tolist(), 40) for n in lengths]
    return custom_collate_fn(examples, pad_token_id=vocab - 1)


def ours_step(model, optimizer, inputs, targets) -> None:
    train_step(model, optimizer, list(model.parameters()), [(inputs, targets)], "cpu",
               contextlib.nullcontext(), 1.0, TrainState())


def transformers_step(model, optimizer, inputs, targets) -> None:
    # labels[t + 1] is what position t must predict: the model shifts them back itself.
    labels = torch.cat([torch.full_like(targets[:, :1], IGNORE), targets[:, :-1]], dim=1)
    optimizer.zero_grad(set_to_none=True)
    model(input_ids=inputs, labels=labels).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6, help="transformer blocks (gpt2-small: 12)")
    parser.add_argument("--dim", type=int, default=384, help="embedding size (gpt2-small: 768)")
    parser.add_argument("--heads", type=int, default=6, help="attention heads (gpt2-small: 12)")
    parser.add_argument("--batch", type=int, default=8, help="examples per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each loop, after one warm-up")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    torch.manual_seed(0)
    shape = {"emb_dim": args.dim, "n_layers": args.layers, "n_heads": args.heads}
    ours = GPTModel({"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True, **shape})
    hf = GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=args.dim, n_head=args.heads, n_positions=1024,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    loops = {"ours": (ours, ours_step), "transformers": (hf, transformers_step)}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
                  for name, (model, _) in loops.items()}
    generator = torch.Generator().manual_seed(0)
    batches = [instruction_batch(args.batch, 50257, generator) for _ in range(args.steps + 1)]

    times: dict[str, list[float]] = {name: [] for name in loops}
    for inputs, targets in batches:
        for name, (model, step) in loops.items():
            model.train()
            start = time.perf_counter()
            step(model, optimizers[name], inputs, targets)
            times[name].append(time.perf_counter() - start)
    tokens = {name: [b[0].numel() for b in batches] for name in loops}
    rate = {name: max(t / s for t, s in zip(tokens[name][1:], times[name][1:], strict=True)) for name in loops}

    n_params = sum(p.numel() for p in ours.parameters())
    lines = [
        f"Config: {args.layers} layers, {args.dim} dims, {args.heads} heads ({n_params / 1e6:.0f}M parameters; "
        f"gpt2-cpu's shape is 6/384/6, gpt2-small's 12/768/12), batch {args.batch} × 96-128 tokens (padded per batch), "
        f"prompt masked; AdamW, clipping 1.0, fp32. torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{psutil.cpu_count()} CPU cores ({platform.machine()}), shared with other jobs. "
        f"Fastest of {args.steps} steps after a warm-up, the two loops alternating; "
        f"process RSS at the end {psutil.Process().memory_info().rss / 2**30:.1f} GiB (both models).",
        "",
        "| loop | tokens/s | s/step (fastest) | s/step (median) |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {rate[name]:,.0f} | {min(times[name][1:]):.2f} | "
          f"{sorted(times[name][1:])[len(times[name][1:]) // 2]:.2f} |" for name in loops],
        "",
        f"Ratio ours / transformers: **{rate['ours'] / rate['transformers']:.2f}×** (target ≥ 1.0×).",
        "No GPU was lent to the session that measured this; gpt2-medium bf16 tokens/s and MFU on a GPU "
        "remain to be measured.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Training throughput", "\n".join(lines), command="python benchmarks/bench_train.py")


if __name__ == "__main__":
    main()
