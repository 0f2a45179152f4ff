"""The README's quality numbers: `make run PROFILE=quality` (the same pipeline as every profile),
then its run folder's results written into benchmarks/RESULTS.md.

    python benchmarks/quality_run.py                          # about 1 h on 2 CPU cores
    python benchmarks/quality_run.py --resume runs/<run>      # continue an interrupted run
    python benchmarks/quality_run.py --from-run runs/<run>    # only rewrite RESULTS.md from a finished run

Every step writes its config next to its results: the dataset's manifest.json, the run's
train_config.json in checkpoints/<run>/, guard.json beside it, and report.json in runs/<run>/eval/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from results import command_line, write_section

from correcteur.files import PROJECT_ROOT
from correcteur.guard import GuardConfig
from correcteur.guard_tuning import chosen_setting, describe_setting
from correcteur.pipeline import RunPaths
from correcteur.pipeline import main as pipeline_main


def results_text(run_dir: Path) -> str:
    """What the run measured, in the words of RESULTS.md."""
    paths = RunPaths(run_dir)

    def load(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8"))

    manifest = load(paths.data_dir / "manifest.json")
    training = load(run_dir / "training.json")
    summary, checkpoint = training["summary"], Path(training["checkpoint"])
    report = load(paths.eval_dir / "report.json")
    guard = GuardConfig(**load(checkpoint / "guard.json")["config"])
    promised = chosen_setting(checkpoint)
    profile = load(run_dir / "profile.json")  # the settings the run had, whatever the profile says today
    train = profile["train"]
    timings = load(run_dir / "timings.json") if (run_dir / "timings.json").exists() else []
    minutes = sum(t["seconds"] for t in timings) / 60
    resumed = len(timings) > len({t["notebook"] for t in timings})
    return "\n".join([
        f"`{profile['model']}`, LoRA rank {train['lora_rank']}, lr {train['lr']}, batch {train['batch_size']}, "
        f"prompt `{train['prompt_style']}`. Data: embedded corpus, seed 123, {manifest['counts']} pairs "
        f"(split by sentence before augmentation).",
        f"Training: {summary['steps']} steps ({summary['steps'] * train['batch_size']:,} examples, batches grouped by "
        f"length), {summary['tokens_seen']:,} tokens in {summary['train_seconds'] / 60:.1f} min "
        f"({summary['tokens_per_s']:.0f} tokens/s), stopped by {summary['stop_reason']}; best validation loss "
        f"{summary['best_val_loss'] or float('nan'):.4f} at step {summary['best_step']}; "
        f"peak RAM {summary['peak_ram_mb']:.0f} MB.",
        f"Guard tuned on {promised['n']} validation entries ({promised['n_clean']} of them already correct), "
        f"the targets required one standard error inside their bounds ("
        f"{'met' if promised['meets_targets'] else 'met by no setting: the lowest harm rate was taken'}): "
        f"{guard}; on validation it gave {describe_setting(promised)}.",
        *([f"The whole run (five notebooks{', over its resumed invocations' if resumed else ''}): "
           f"{minutes / 60:.2f} h."] if minutes else []),
        "",
        f"Held-out test split, {report['n']} entries (targets: harm_rate ≤ 0.05, clean_preserved ≥ 0.97, "
        "error_reduction ≥ 0.30):",
        "",
        "```",
        report["table"],
        "```",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted quality run")
    group.add_argument("--from-run", type=Path, metavar="RUN_DIR", help="a finished quality run: write its results only")
    args = parser.parse_args()
    run_dir = args.from_run
    if run_dir is None:
        before = set((PROJECT_ROOT / "runs").glob("*-quality")) if args.resume is None else set()
        code = pipeline_main(["--profile", "quality", *(["--resume", str(args.resume)] if args.resume else [])])
        if code:
            sys.exit(code)
        run_dir = args.resume or max(set((PROJECT_ROOT / "runs").glob("*-quality")) - before)
    body = results_text(run_dir)
    print(body)
    write_section("Quality of the CPU corrector (profile quality)", body,
                  command=command_line("quality_run.py", parser, args))


if __name__ == "__main__":
    main()
