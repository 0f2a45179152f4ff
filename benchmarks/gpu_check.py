"""What a lent GPU should measure, in about 5 minutes: one table, the "## GPU check" section of
benchmarks/RESULTS.md.

    python benchmarks/gpu_check.py [--peak-tflops 989] [--skip-pipelines] [--no-write]

1. gpt2-medium's shape with random weights, the project's training step (`train.train_step`:
   bf16 autocast, fused AdamW, clipping) on batches of 8 x 256 tokens, every target counted:
   tokens/s and MFU, eager and with `torch.compile`; peak GPU memory of the eager steps.
2. Greedy generation with the KV cache (`generate.generate`), batch 1 and 8: new tokens/s.
3. The main job end to end: the `tiny` profile, and the `gpu` profile shortened (a few hundred
   sentences, 50 training steps, 40 test entries; under torchrun when several GPUs are
   visible). These need the notebooks' packages and, for `gpu`, gpt2-medium's weights (the
   hub, or `checkpoints/355M/`); a run that fails is a row that says why.

MFU is model FLOPs per token, 6·N + 12·layers·dim·T (nanoGPT's estimate: N the parameters
without the position embeddings, the head tied to the token embeddings; T = 256), times tokens/s,
over the GPU's dense bf16 peak: `--peak-tflops`, else `bench_train.PEAK_BF16_TFLOPS` by name.
The issue's target is >= 40% for gpt2-medium (nanoGPT reaches 40-50% on an A100 with compile
and flash attention; its vocabulary is padded to 50,304, ours is GPT-2's 50,257).

Without a CUDA device it says so and exits with status 2; the test suite checks only that.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from bench_train import flops_per_token, peak_tflops
from results import write_section

from correcteur import pipeline
from correcteur.generate import generate
from correcteur.model import GPTModel, gpt2_config
from correcteur.train import TrainState, autocast_for, train_step

BATCH, LENGTH = 8, 256


def no_cuda_message() -> str:
    return (f"gpu_check: no CUDA device is visible (torch {torch.__version__}, torch.cuda.is_available() is "
            "False); run it on a machine with an NVIDIA GPU and a CUDA build of torch")


def random_gpt2_medium(device: torch.device) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel({**gpt2_config("gpt2-medium"), "drop_rate": 0.0}).to(device)


def model_flops_per_token(model: GPTModel, length: int) -> float:
    n = sum(p.numel() for p in model.parameters()) - model.pos_emb.weight.numel()  # tied head counted once
    return flops_per_token(n, model.cfg["n_layers"], model.cfg["emb_dim"], length)


def release(device: torch.device) -> None:
    """Give the memory of the last measurement back, so the next one starts from empty."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def timed(device: torch.device, fn, repeats: int) -> float:
    """Seconds per call of `fn`, averaged over `repeats` calls (the GPU drained before and after)."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def training_speed(device: torch.device, compiled: bool, steps: int) -> dict:
    """tokens/s of the training step on random 8 x 256 batches, and the peak memory it took."""
    model = random_gpt2_medium(device).train()
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
    generator = torch.Generator(device=device).manual_seed(0)
    vocab = model.cfg["vocab_size"]
    batches = [(torch.randint(0, vocab, (BATCH, LENGTH), device=device, generator=generator),
                torch.randint(0, vocab, (BATCH, LENGTH), device=device, generator=generator)) for _ in range(2)]
    amp, state, next_batch = autocast_for(device), TrainState(), itertools.cycle(batches)

    def step() -> None:
        train_step(step_model, optimizer, list(model.parameters()), [next(next_batch)], device, amp, 1.0, state)

    start = time.perf_counter()
    for _ in range(3):  # warm-up: kernels chosen, and the graphs compiled
        step()
    torch.cuda.synchronize(device)
    warm_up_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(device, step, steps)
    result = {"tokens_per_s": BATCH * LENGTH / seconds, "step_s": seconds, "warm_up_s": warm_up_s,
              "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
              "flops_per_token": model_flops_per_token(model, LENGTH)}
    return result


def generation_speed(device: torch.device, batch: int, new_tokens: int = 192) -> float:
    """New tokens/s of greedy generation with the KV cache after a 64-token prompt."""
    model = random_gpt2_medium(device).eval()
    prompt = torch.randint(0, model.cfg["vocab_size"], (batch, 64), device=device,
                           generator=torch.Generator(device=device).manual_seed(1))

    def run(n: int) -> None:
        with torch.no_grad(), autocast_for(device):
            generate(model, prompt, max_new_tokens=n, context_size=model.context_length)

    run(8)  # warm-up
    return batch * new_tokens / timed(device, lambda: run(new_tokens), 2)


def shortened_gpu_profile(model: str) -> pipeline.Profile:
    gpu = pipeline.get_profile("gpu")
    return dataclasses.replace(gpu, model=model, max_sentences=600, variants_per_sentence=1,
                               train={**gpu.train, "max_steps": 50, "eval_freq": 25, "eval_iter": 2},
                               eval_limit=40, guard_limit=80, base_model_baseline=False, judge=False)


def main_job(profile: pipeline.Profile, runs_dir: Path) -> str:
    """Run the notebooks of `profile`: minutes and what training said, or why it failed."""
    run_dir = runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{profile.name}"
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    try:
        pipeline.run_pipeline(profile, run_dir)
    except Exception as error:  # a failing notebook: its saved copy shows the cell
        first = (str(error).strip().splitlines() or [type(error).__name__])[-1][:160]
        return f"failed after {(time.perf_counter() - start) / 60:.1f} min ({first}); see {run_dir}"
    minutes = (time.perf_counter() - start) / 60
    training = json.loads((run_dir / "training.json").read_text(encoding="utf-8")).get("summary", {})
    return (f"{minutes:.1f} min: {training.get('steps')} steps on {training.get('ranks', 1)} process(es), "
            f"{training.get('tokens_per_s', 0):,.0f} tokens/s, pretrained {training.get('pretrained')}; {run_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for MFU (default: known GPUs by name)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps of each variant")
    parser.add_argument("--gpu-model", default="gpt2-medium",
                        help="base model of the shortened gpu profile (a name or a local Hugging Face directory)")
    parser.add_argument("--skip-pipelines", action="store_true", help="measure the model only, not the main job")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(no_cuda_message(), file=sys.stderr)
        return 2
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    for compiled in (False, True):
        label = "torch.compile" if compiled else "eager"
        release(device)
        try:
            speed = training_speed(device, compiled, args.steps)
        except Exception as error:  # compile needs a working Triton: say so and go on
            rows.append((f"training, {label}", "failed", str(error).strip().splitlines()[0][:160]))
            continue
        mfu = (f"MFU {speed['tokens_per_s'] * speed['flops_per_token'] / (peak * 1e12):.1%}" if peak
               else "MFU: unknown GPU, pass --peak-tflops")
        rows.append((f"training, {label}", f"{speed['tokens_per_s']:,.0f} tokens/s",
                     f"{mfu}; {speed['step_s'] * 1000:.0f} ms/step; warm-up {speed['warm_up_s']:.0f} s"))
        if not compiled:
            rows.append(("peak memory, training 8 x 256", f"{speed['peak_gib']:.1f} GiB",
                         "fp32 weights, AdamW state, bf16 activations"))
    for batch in (1, 8):
        release(device)
        rows.append((f"generation, KV cache, batch {batch}", f"{generation_speed(device, batch):,.0f} tokens/s",
                     "greedy, 64-token prompt + 192 new tokens, bf16 autocast"))
    if not args.skip_pipelines:
        release(device)
        runs_dir = pipeline.PROJECT_ROOT / "runs" / "gpu-check"
        rows.append(("main job, tiny profile", main_job(pipeline.get_profile("tiny"), runs_dir), ""))
        processes = pipeline.training_processes(pipeline.get_profile("gpu"))
        rows.append((f"main job, gpu profile shortened ({processes} GPU(s))",
                     main_job(shortened_gpu_profile(args.gpu_model), runs_dir), "600 sentences, 50 steps, 40 test entries"))
    lines = [
        f"{name}, {torch.cuda.device_count()} visible; torch {torch.__version__}, CUDA {torch.version.cuda}. "
        f"gpt2-medium's shape (355M parameters, random weights), batch {BATCH} x {LENGTH} tokens, every target "
        f"counted; {args.steps} timed steps after 3 warm-up ones. MFU: 6N + 12·layers·dim·T FLOPs per token "
        + (f"against a dense bf16 peak of {peak:.0f} TFLOP/s" if peak else "(no peak known for this GPU)")
        + "; the target is >= 40%.",
        "",
        "| measure | value | notes |",
        "|---|---|---|",
        *[f"| {measure} | {value} | {notes} |" for measure, value, notes in rows],
    ]
    print("\n".join(lines))
    if not args.no_write:
        given = sys.argv[1:] if argv is None else argv
        write_section(f"GPU check ({name})", "\n".join(lines), command=" ".join(["python benchmarks/gpu_check.py", *given]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
