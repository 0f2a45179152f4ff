"""The quality run of the CPU corrector: data → fine-tune → tune the guard on validation →
evaluate on the held-out test split → the numbers into benchmarks/RESULTS.md.

    python benchmarks/quality_run.py                 # SmolLM2-135M + LoRA r16, 90 minutes (under 2 h in all)
    python benchmarks/quality_run.py --lora-rank 0   # full fine-tuning instead
    python benchmarks/quality_run.py --resume        # continue an interrupted run

Every step writes its config next to its results: the dataset's manifest.json, the run's
config.json in checkpoints/<run>/, guard.json beside it, and report.json in runs/<run>/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from results import command_line, write_section

from correcteur.augment import AugmentConfig
from correcteur.data import DataConfig, build_dataset
from correcteur.evaluate import EvalConfig, evaluate
from correcteur.guard import calibrate_guard, chosen_setting, describe_setting
from correcteur.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def quality_data(prompt_style: str = "short", variants: int = 4) -> Path:
    """The quality run's dataset (embedded corpus, seed 123), built on first use: one folder per
    setting that shapes it, so a changed option never reuses stale data."""
    data_dir = ROOT / "data" / "quality" / f"{prompt_style}-v{variants}-seed123"
    if not (data_dir / "manifest.json").exists():
        build_dataset(DataConfig(source="embedded", out=str(data_dir), seed=123, prompt_style=prompt_style,
                                 augment=AugmentConfig(variants=variants)))
    return data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--minutes", type=float, default=90.0, help="training budget")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=16, help="0 = full fine-tuning")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-style", default="short")
    parser.add_argument("--variants", type=int, default=4, help="corrupted inputs per training sentence")
    parser.add_argument("--val-limit", type=int, default=0, help="validation entries used to tune the guard (0: all)")
    parser.add_argument("--test-limit", type=int, default=400, help="test entries scored (0: all)")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="sentences generated together")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.run_name or f"quality-{args.model}-{'lora' + str(args.lora_rank) if args.lora_rank else 'full'}"
    report_dir = ROOT / "runs" / name
    started = time.perf_counter()
    data_dir = quality_data(args.prompt_style, args.variants)
    manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))

    config = TrainConfig(model=args.model, data_dir=str(data_dir), out_dir=str(ROOT / "checkpoints"), run_name=name,
                         prompt_style=args.prompt_style, lr=args.lr, batch_size=args.batch_size, num_epochs=3,
                         eval_freq=50, eval_iter=4, patience=6, lora_rank=args.lora_rank, group_by_length=True,
                         lora_alpha=2.0 * args.lora_rank, max_minutes=args.minutes, checkpoint_every=50)
    result = train(config, resume=args.resume)

    guard = calibrate_guard(config.run_dir, data_dir / "val.json", limit=args.val_limit or None,
                            batch_size=args.eval_batch_size)
    promised = chosen_setting(config.run_dir)
    # The base model is left out here (it only rambles, and costs as much as the model);
    # notebook 04 and `correcteur evaluate` report it.
    report = evaluate(EvalConfig(checkpoint=str(config.run_dir), test=str(data_dir / "test.json"),
                                 out=str(report_dir), limit=args.test_limit or None,
                                 batch_size=args.eval_batch_size, base_model=False))
    hours = (time.perf_counter() - started) / 3600

    summary = result.summary
    body = "\n".join([
        f"`{args.model}`, {'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}, "
        f"lr {args.lr}, batch {args.batch_size}, prompt `{args.prompt_style}`, {torch.get_num_threads()} threads. "
        f"Data: embedded corpus, seed 123, {manifest['counts']} pairs (split by sentence before augmentation).",
        f"Training: {summary['steps']} steps ({summary['steps'] * args.batch_size:,} examples, batches grouped by "
        f"length), {summary['tokens_seen']:,} tokens in {summary['train_seconds'] / 60:.1f} min "
        f"({summary['tokens_per_s']:.0f} tokens/s), stopped by {summary['stop_reason']}; best validation loss "
        f"{summary['best_val_loss'] or float('nan'):.4f} at step {summary['best_step']}; "
        f"peak RAM {summary['peak_ram_mb']:.0f} MB.",
        f"Guard tuned on {promised['n']} validation entries ({promised['n_clean']} of them already correct), "
        f"the targets required one standard error inside their bounds ("
        f"{'met' if promised['meets_targets'] else 'met by no setting: the lowest harm rate was taken'}): "
        f"{guard}; on validation it gave {describe_setting(promised)}.",
        (f"Whole run (data, training, guard, evaluation): {hours:.2f} h." if not args.resume else
         f"This resumed invocation (the rest of training, guard, evaluation; answers already written are "
         f"reused): {hours:.2f} h."),
        "",
        f"Held-out test split, {report['n']} entries (targets: harm_rate ≤ 0.05, clean_preserved ≥ 0.97, "
        "error_reduction ≥ 0.30):",
        "",
        "```",
        report["table"],
        "```",
    ])
    print(body)
    write_section(f"Quality of the CPU corrector ({name})", body,
                  command=command_line("quality_run.py", parser, args))


if __name__ == "__main__":
    main()
