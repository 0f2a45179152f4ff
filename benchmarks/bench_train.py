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

On a GPU, the project's default model in bf16 (writes its own section, "... (cuda, bf16)"):

    python benchmarks/bench_train.py --shape gpt2-medium --device cuda --bf16 --batch 16 --steps 20

MFU counts the standard model FLOPs per token, 6·N + 12·layers·dim·T (nanoGPT's estimate, N
all parameters, T the padded length), against the GPU's dense bf16 peak (`--peak-tflops`, or a
table of known GPUs). Our loop skips the output head on prompt and padding positions, so it
does less work than that count: its MFU reads as "useful model FLOPs".
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import re
import sys
import time

import psutil
import torch
from results import write_section
from transformers import GPT2Config, GPT2LMHeadModel

from correcteur.batches import custom_collate_fn
from correcteur.model import GPTModel, gpt2_config
from correcteur.train import TrainState, train_step

IGNORE = -100
# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs people are likely to run this on.
# The first name found in the GPU's wins: "H100 PCIe" before "H100" (SXM).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "T4": 65.0}


def instruction_batch(batch: int, vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.randint(96, 129, (batch,), generator=generator).tolist()
    examples = [(torch.randint(0, vocab - 1, (n,), generator=generator).tolist(), 40) for n in lengths]
    return custom_collate_fn(examples, pad_token_id=vocab - 1)


def ours_step(model, optimizer, inputs, targets, amp) -> None:
    train_step(model, optimizer, list(model.parameters()), [(inputs, targets)], inputs.device,
               amp, 1.0, TrainState())


def transformers_step(model, optimizer, inputs, targets, amp) -> None:
    # labels[t + 1] is what position t must predict: the model shifts them back itself.
    labels = torch.cat([torch.full_like(targets[:, :1], IGNORE), targets[:, :-1]], dim=1)
    optimizer.zero_grad(set_to_none=True)
    with amp:
        loss = model(input_ids=inputs, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The GPU's dense bf16 peak: `given`, else looked up by its name; None on a CPU or unknown GPU."""
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)  # e.g. "NVIDIA A10G": whole words only, not "A10"
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if re.search(rf"\b{key}\b", name)), None)


def flops_per_token(n_params: int, layers: int, dim: int, length: int) -> float:
    return 6 * n_params + 12 * layers * dim * length


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default=None, help="a GPT-2 size (gpt2, gpt2-medium, ...): sets --layers, --dim and --heads (over theirs)")
    parser.add_argument("--layers", type=int, default=6, help="transformer blocks (gpt2-small: 12)")
    parser.add_argument("--dim", type=int, default=384, help="embedding size (gpt2-small: 768)")
    parser.add_argument("--heads", type=int, default=6, help="attention heads (gpt2-small: 12)")
    parser.add_argument("--batch", type=int, default=8, help="examples per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each loop, after one warm-up")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (what training does on CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak for MFU (default: known GPUs by name)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.shape:
        cfg = gpt2_config(args.shape)
        args.layers, args.dim, args.heads = cfg["n_layers"], cfg["emb_dim"], cfg["n_heads"]
    device = torch.device(args.device)  # TF32 left as torch sets it, as in train()
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext())
    precision = "bf16 autocast" if args.bf16 else "fp32"

    torch.manual_seed(0)
    shape = {"emb_dim": args.dim, "n_layers": args.layers, "n_heads": args.heads}
    ours = GPTModel({"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True, **shape})
    hf = GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=args.dim, n_head=args.heads, n_positions=1024,
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    loops = {"ours": (ours.to(device), ours_step), "transformers": (hf.to(device), transformers_step)}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
                  for name, (model, _) in loops.items()}
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(t.to(device) for t in instruction_batch(args.batch, 50257, generator))
               for _ in range(args.steps + 1)]

    times: dict[str, list[float]] = {name: [] for name in loops}
    peak_mb = dict.fromkeys(loops, 0.0)
    for inputs, targets in batches:
        for name, (model, step) in loops.items():
            model.train()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            step(model, optimizers[name], inputs, targets, amp)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peak_mb[name] = max(peak_mb[name], torch.cuda.max_memory_allocated(device) / 2**20)
    n_params = sum(p.numel() for p in ours.parameters())
    peak = peak_tflops(device, args.peak_tflops) if args.bf16 else None  # the peaks are bf16 ones
    rate, mfu, step_s = {}, {}, {}
    for name in loops:  # the fastest timed step, and its own batch's length for the attention FLOPs
        fastest = min(range(1, len(batches)), key=lambda i: times[name][i] / batches[i][0].numel())
        inputs = batches[fastest][0]
        step_s[name] = times[name][fastest]
        rate[name] = inputs.numel() / step_s[name]
        if peak:
            flops = flops_per_token(n_params, args.layers, args.dim, inputs.shape[1])
            mfu[name] = rate[name] * flops / (peak * 1e12)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads, {psutil.cpu_count()} CPU cores ({platform.machine()}), "
                  "shared with other jobs")
    lines = [
        f"Config: {args.layers} layers, {args.dim} dims, {args.heads} heads ({n_params / 1e6:.0f}M parameters; "
        f"gpt2-cpu's shape is 6/384/6, gpt2-small's 12/768/12, gpt2-medium's 24/1024/16), batch {args.batch} × "
        f"96-128 tokens (padded per batch), prompt masked; AdamW, clipping 1.0, {precision}. "
        f"torch {torch.__version__}, {where}. Fastest of {args.steps} steps after a warm-up, the two loops "
        f"alternating; " + (f"peak GPU memory during a step: ours {peak_mb['ours'] / 1024:.1f} GiB, transformers "
                             f"{peak_mb['transformers'] / 1024:.1f} GiB (both models resident)."
                             if device.type == "cuda" else
                             f"process RSS at the end {psutil.Process().memory_info().rss / 2**30:.1f} GiB (both models)."),
        "",
        "| loop | tokens/s | s/step (best step) | s/step (median) |" + (" MFU |" if mfu else ""),
        "|---|---:|---:|---:|" + ("---:|" if mfu else ""),
        *[f"| {name} | {rate[name]:,.0f} | {step_s[name]:.3f} | "
          f"{sorted(times[name][1:])[len(times[name][1:]) // 2]:.3f} |" + (f" {mfu[name]:.1%} |" if mfu else "")
          for name in loops],
        "",
        f"Ratio ours / transformers: **{rate['ours'] / rate['transformers']:.2f}×** (target ≥ 1.0×).",
    ]
    if mfu:
        lines.append(f"MFU against a dense bf16 peak of {peak:.0f} TFLOP/s, "
                     f"6N + 12·layers·dim·length FLOPs per token ({6 * n_params / 1e9:.2f} GFLOP + attention), "
                     "each loop's fastest step at its own batch length.")
    print("\n".join(lines))
    if not args.no_write:
        title = "Training throughput" + ("" if device.type == "cpu" and not args.bf16 else f" ({device.type}, {precision})")
        command = " ".join(["python benchmarks/bench_train.py", *sys.argv[1:]])
        write_section(title, "\n".join(lines), command=command)


if __name__ == "__main__":
    main()
