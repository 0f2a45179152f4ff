"""LoRA or full fine-tuning, same wall-clock budget: which learns more on this machine?

Each setup trains the CPU base model on the quality run's data for the same number of
minutes (same seed, same batches, no evaluation during training so that all the time goes
to steps), then every setup is scored on the same validation examples.

    python benchmarks/bench_finetune.py                       # 6 minutes each, 3 setups
    python benchmarks/bench_finetune.py --minutes 2 --setups lora16@1e-3,full@1e-4

Writes the "LoRA vs full fine-tuning" section of benchmarks/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import platform
import re
import tempfile
from pathlib import Path

import psutil
import torch
from results import command_line, write_section

from correcteur.augment import AugmentConfig
from correcteur.batches import InstructionDataset, batch_order, custom_collate_fn
from correcteur.data import DataConfig, build_dataset
from correcteur.files import PROJECT_ROOT
from correcteur.pipeline import PROFILES
from correcteur.train import TrainConfig, calc_loss_loader, load_split, train
from correcteur.weights import load_base_model


def quality_data() -> Path:
    """The `quality` profile's dataset (embedded corpus, seed 123), built on first use into a
    folder named by its prompt style and variants (a change to other data settings needs the
    folder deleted)."""
    profile = PROFILES["quality"]
    style, variants = profile.train["prompt_style"], profile.variants_per_sentence
    data_dir = PROJECT_ROOT / "data" / "quality" / f"{style}-v{variants}-seed123"
    if not (data_dir / "manifest.json").exists():
        build_dataset(DataConfig(source=profile.data_source, out=str(data_dir), seed=123, prompt_style=style,
                                 augment=AugmentConfig(variants=variants)))
    return data_dir


def parse_setups(text: str) -> list[tuple[int, float]]:
    """"lora16@1e-3,full@1e-4" -> [(16, 0.001), (0, 0.0001)]: LoRA rank (0 = full) and learning rate."""
    setups = []
    for item in text.split(","):
        match = re.fullmatch(r"(?:full|lora([1-9]\d*))@(\d+(?:\.\d*)?(?:e-?\d+)?)", item.strip())
        if not match:
            raise SystemExit(f"bench_finetune.py: bad setup {item!r}; write lora16@1e-3 or full@1e-4")
        setups.append((int(match[1] or 0), float(match[2])))
    return setups


def validation_loss(model, tokenizer, entries: list[dict], batch_size: int) -> float:
    """The mean of per-batch response losses on `entries`, batched by length (the same batches
    for every setup)."""
    dataset = InstructionDataset(entries, tokenizer, "short")
    batches = [custom_collate_fn([dataset[i] for i in b], pad_token_id=tokenizer.eot_token)
               for b in batch_order(dataset.lengths, batch_size, seed=0, epoch=0, group_by_length=True)]
    model.eval()
    with torch.no_grad():
        return calc_loss_loader(batches, model, "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget of each setup")
    parser.add_argument("--setups", default="lora16@1e-3,full@1e-4,full@3e-5",
                        help="comma-separated loraR@LR or full@LR")
    parser.add_argument("--val-examples", type=int, default=160, help="validation examples scored at the end")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    setups = parse_setups(args.setups)
    data = quality_data()
    val = load_split(data, "val")[:args.val_examples]
    tokenizer = load_base_model(args.model)[1]

    rows = []
    with tempfile.TemporaryDirectory() as out:
        for rank, lr in setups:
            label = f"LoRA r{rank}" if rank else "full"
            config = TrainConfig(model=args.model, data_dir=str(data), out_dir=out, run_name=f"{label}-{lr}",
                                 prompt_style="short", lr=lr, batch_size=8, num_epochs=1, group_by_length=True,
                                 eval_freq=10**9, checkpoint_every=10**9, lora_rank=rank, lora_alpha=2.0 * rank,
                                 max_minutes=args.minutes)
            result = train(config)
            summary = result.summary
            rows.append({"setup": f"{label}, lr {lr:g}", "steps": summary["steps"],
                         "tokens_per_s": summary["tokens_per_s"],
                         "val_loss": validation_loss(result.model, tokenizer, val, 8)})

    # No memory column: the setups share one process, so its peak RSS only grows down the table.
    table = ["| setup | steps | tokens/s | validation loss |", "|---|---:|---:|---:|"]
    table += [f"| {r['setup']} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['val_loss']:.4f} |" for r in rows]
    body = "\n".join([
        f"`{args.model}`, {args.minutes:g} minutes of training per setup (the same seed and batches: short "
        f"prompt, batch 8 grouped by length), no evaluation during training; validation loss on the same "
        f"{len(val)} validation examples afterwards. torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{psutil.cpu_count()} CPU cores ({platform.machine()}).",
        "",
        *table,
    ])
    print(body)
    if not args.no_write:
        write_section("LoRA vs full fine-tuning", body,
                      command_line("bench_finetune.py", parser, args, leave_out=("no_write",)))


if __name__ == "__main__":
    main()
