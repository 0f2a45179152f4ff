"""The main job: run the five notebooks top to bottom, headless, into `runs/<timestamp>/`.

A *profile* sizes the whole pipeline for the machine at hand; every notebook reads the same one
(`CORRECTEUR_PROFILE`), so one switch changes model, data and training budget everywhere:

- `gpu`: the user's setting, gpt2-medium (355M) fine-tuned on the Hugging Face dataset (the
  embedded corpus when the hub is unreachable), 5 epochs, AdamW 5e-5; with several GPUs
  visible, trained under torchrun on all of them (batch 8 per GPU).
- `cpu`: the same pipeline sized for a 2-core CPU: SmolLM2-135M with
  LoRA on the embedded corpus, 8 minutes of training, 120 test sentences.
- `quality`: the CPU corrector whose numbers the README reports: SmolLM2-135M with LoRA on the
  embedded corpus with 4 corrupted copies of each sentence, up to 90 minutes of training (early
  stopping ends it sooner), the guard tuned on all of validation, 400 test entries (about 1 h).
- `tiny`: seconds per notebook, for CI: a 2-layer GPT-2 from scratch on a few hundred pairs.

    python -m correcteur.pipeline --profile cpu
    python -m correcteur.pipeline --profile quality --resume runs/<run>   # go on where it stopped
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from correcteur.files import CHECKPOINTS_DIR, PROJECT_ROOT, write_json

# The profile's settings, for the notebooks of a run whose profile differs from the named one
# (benchmarks/gpu_check.py runs the gpu profile shortened).
PROFILE_JSON = "CORRECTEUR_PROFILE_JSON"
NOTEBOOKS = ["01_setup", "02_dataset", "03_finetune", "04_evaluate", "05_demo"]


@dataclass
class Profile:
    name: str
    model: str  # a name `weights.load_base_model` knows
    data_source: str  # "embedded", "hf" or a file path
    max_sentences: int | None  # cap on source sentences (None = all)
    variants_per_sentence: int
    train: dict = field(default_factory=dict)  # TrainConfig overrides
    eval_limit: int | None = None  # test entries to answer (None = all)
    # Validation entries the guard is tuned on (None = all): its targets must hold a standard
    # error inside their bounds, which a few dozen clean sentences cannot show.
    guard_limit: int | None = None
    base_model_baseline: bool = True
    judge: bool = True  # ask the Ollama judge when a server answers
    chooser_scorer: str | None = "gemma"  # who judges the chooser's candidates (None: no chooser)


PROFILES = {
    "gpu": Profile(
        name="gpu", model="gpt2-medium", data_source="hf", max_sentences=None, variants_per_sentence=4,
        train=dict(num_epochs=5, lr=5e-5, weight_decay=0.1, batch_size=8, eval_freq=50, eval_iter=5,
                   patience=4, prompt_style="alpaca", group_by_length=True),
    ),
    "cpu": Profile(
        name="cpu", model="smollm2-135m", data_source="embedded", max_sentences=None, variants_per_sentence=2,
        train=dict(num_epochs=1, lr=1e-3, batch_size=8, eval_freq=25, eval_iter=4, patience=4,
                   prompt_style="short", lora_rank=16, lora_alpha=32, max_minutes=8, group_by_length=True),
        eval_limit=120,
    ),
    "quality": Profile(
        name="quality", model="smollm2-135m", data_source="embedded", max_sentences=None, variants_per_sentence=4,
        train=dict(num_epochs=3, lr=1e-3, batch_size=8, eval_freq=50, eval_iter=4, patience=6,
                   prompt_style="short", lora_rank=16, lora_alpha=32, max_minutes=90, group_by_length=True,
                   checkpoint_every=50),
        eval_limit=400, base_model_baseline=False, judge=False,
    ),
    "tiny": Profile(
        name="tiny", model="gpt2-tiny", data_source="embedded", max_sentences=300, variants_per_sentence=1,
        train=dict(num_epochs=1, lr=1e-3, batch_size=8, eval_freq=5, eval_iter=2, patience=4,
                   prompt_style="short", max_steps=10, allow_scratch=True),
        eval_limit=16, guard_limit=16, base_model_baseline=False, judge=False, chooser_scorer=None,
    ),
}


def get_profile(name: str = "auto") -> Profile:
    """The named profile; `auto` is `gpu` when CUDA is available, else `cpu`."""
    if name == "auto":
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)} or auto")
    return PROFILES[name]


@dataclass
class RunPaths:
    """Where one run's files go: notebooks and reports in `run_dir`, data in `run_dir/data`,
    the trained model in `checkpoints/<run name>` ($CORRECTEUR_CHECKPOINTS overrides the folder)."""

    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def checkpoints(self) -> Path:
        return Path(os.environ.get("CORRECTEUR_CHECKPOINTS") or CHECKPOINTS_DIR)

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / self.name

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / "eval"


def notebook_run(profile: str | None = None, run_dir: str | Path | None = None) -> tuple[Profile, RunPaths]:
    """The profile and paths a notebook works with: those the main job passes through the
    environment, else the arguments, else `auto` and `runs/notebooks`."""
    os.chdir(PROJECT_ROOT)  # relative paths (checkpoints/, data/) mean what they mean on the command line
    profile = os.environ.get("CORRECTEUR_PROFILE") or profile or "auto"
    run_dir = Path(os.environ.get("CORRECTEUR_RUN_DIR") or run_dir or PROJECT_ROOT / "runs" / "notebooks")
    run_dir.mkdir(parents=True, exist_ok=True)
    given = os.environ.get(PROFILE_JSON)  # the whole profile, when the main job runs a modified one
    return (Profile(**json.loads(given)) if given else get_profile(profile)), RunPaths(run_dir)


def training_processes(profile: Profile) -> int:
    """How many processes train for `profile`: one per visible GPU for `gpu` (torchrun), else one."""
    if profile.name != "gpu":
        return 1
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def torchrun_command(config, processes: int, resume: bool) -> list[str]:
    """`torchrun --nproc_per_node=N -m correcteur train` with every setting of `config` (a
    `TrainConfig`) as its option, so the processes train exactly the run described."""
    options = []
    for f in dataclasses.fields(config):
        value, flag = getattr(config, f.name), f.metadata["flag"] or "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif value is not None:
            options += [flag, str(value)]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "-m", "correcteur",
            "train", *options, *(["--resume"] if resume else [])]


def train_profile(profile: Profile, config, model, tokenizer, base_info: dict, resume: bool):
    """Train `config` as the notebook asks, in this process, or, for the `gpu` profile when
    several GPUs are visible, under torchrun on all of them (data-parallel, `--batch-size` per
    GPU: the effective batch grows with the GPUs); its output is shown as it comes, and the
    result is read back from the run folder. Returns a `train.TrainResult`."""
    from correcteur.checkpoint import load_for_inference
    from correcteur.errors import UserError
    from correcteur.train import TrainResult, train

    processes = training_processes(profile)
    if processes == 1:
        return train(config, model=model, tokenizer=tokenizer, base_info=base_info, resume=resume)
    command = torchrun_command(config, processes, resume)
    print(f"{processes} GPUs: {' '.join(command[2:])}", flush=True)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
    if process.returncode:
        raise UserError(f"torchrun ended with status {process.returncode} (its output is above); run the notebook "
                        "again to resume from the last checkpoint")
    run_dir = config.run_dir
    trained, _, _ = load_for_inference(run_dir)
    history, summary = (json.loads((run_dir / name).read_text(encoding="utf-8"))
                        for name in ("history.json", "summary.json"))
    return TrainResult(model=trained, history=history, run_dir=run_dir, summary=summary)


def headless() -> bool:
    """True when no window should open: the main job runs notebooks unattended, or there is no display."""
    return bool(os.environ.get("CORRECTEUR_HEADLESS")) or (
        sys.platform.startswith("linux") and not os.environ.get("DISPLAY"))


def describe_device() -> dict:
    """The accelerator (name, memory) or CPU this run uses, and the machine's RAM."""
    import platform

    import psutil
    import torch

    info = {"ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "cpu_cores": os.cpu_count(),
            "torch": torch.__version__}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device="cuda", name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    elif torch.backends.mps.is_available():
        info.update(device="mps", name=platform.machine())
    else:
        info.update(device="cpu", name=platform.processor() or platform.machine())
    return info


def record(paths: RunPaths, name: str, data: dict) -> None:
    """Leave a notebook's key facts in the run folder for `summary.md`."""
    write_json(paths.run_dir / f"{name}.json", data)


def run_notebooks(profile: Profile, run_dir: Path, timeout: int = 7200) -> list[dict]:
    """Execute each notebook with nbclient in `notebooks/`, saving the executed copy in `run_dir`.
    Stops at the first notebook that fails, saving it with the failing cell's output."""
    import nbformat
    from nbclient import NotebookClient

    os.environ.update(CORRECTEUR_PROFILE=profile.name, CORRECTEUR_RUN_DIR=str(run_dir.resolve()),
                      **{PROFILE_JSON: json.dumps(dataclasses.asdict(profile))},
                      CORRECTEUR_HEADLESS="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    timings = []
    for name in NOTEBOOKS:
        notebook = nbformat.read(PROJECT_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}})
        start = time.perf_counter()
        print(f"[{name}] running...", flush=True)
        try:
            client.execute()
        finally:
            nbformat.write(notebook, run_dir / f"{name}.ipynb")
        seconds = time.perf_counter() - start
        timings.append({"notebook": name, "seconds": round(seconds, 1)})
        print(f"[{name}] done in {seconds:.0f} s", flush=True)
    return timings


def write_summary(profile: Profile, run_dir: Path, timings: list[dict]) -> Path:
    """`summary.md` from what the notebooks left in the run directory."""

    def load(name: str) -> dict:
        path = run_dir / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    setup, data, training, report = load("setup.json"), load("data.json"), load("training.json"), load("report.json")
    lines = [
        f"# Run {run_dir.name}",
        "",
        f"- profile: `{profile.name}` ({json.dumps(dataclasses.asdict(profile), ensure_ascii=False)})",
        f"- device: {setup.get('device', '?')}; model: {setup.get('model', profile.model)}"
        f" (pretrained: {setup.get('pretrained', '?')})",
        f"- data: {data.get('counts', '?')}",
        f"- training: {training.get('summary', '?')}",
        f"- checkpoint: `{training.get('checkpoint', '?')}`",
        "- time per notebook: " + ", ".join(f"{t['notebook']} {t['seconds']:.0f} s" for t in timings),
        f"- total: {sum(t['seconds'] for t in timings) / 60:.1f} min",
        "",
        "## Metrics on the held-out test split",
        "",
        report.get("table", "(no report: see 04_evaluate.ipynb)"),
        "",
    ]
    path = run_dir / "summary.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_pipeline(profile: Profile, run_dir: Path) -> Path:
    """Run the notebooks into `run_dir` (created, or continued: training resumes from its
    last.pt, answers already written are kept) and write its summary.md."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "profile.json", dataclasses.asdict(profile))
    print(f"profile {profile.name}: writing the executed notebooks to {run_dir}", flush=True)
    timings = run_notebooks(profile, run_dir)
    earlier = json.loads((run_dir / "timings.json").read_text(encoding="utf-8")) if (run_dir / "timings.json").exists() else []
    write_json(run_dir / "timings.json", earlier + timings)  # a resumed run adds its invocation
    return write_summary(profile, run_dir, timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="auto", choices=[*PROFILES, "auto"],
                        help="gpu: gpt2-medium, the user's settings; cpu: SmolLM2-135M + LoRA sized for 2 cores; "
                             "quality: the README's CPU corrector (about 1 h); tiny: seconds, for CI; "
                             "auto: gpu when CUDA is available, else cpu")
    parser.add_argument("--runs-dir", type=Path, default=PROJECT_ROOT / "runs", help="where run folders are created")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run of the same profile in its folder")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    if args.resume is not None:
        saved = args.resume / "profile.json"
        if not saved.is_file() or json.loads(saved.read_text(encoding="utf-8")).get("name") != profile.name:
            print(f"error: {args.resume} is not a run folder of the {profile.name} profile "
                  "(no profile.json naming it)", file=sys.stderr)
            return 2
        run_dir = args.resume
    else:
        run_dir = args.runs_dir / f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{profile.name}"
        run_dir.mkdir(parents=True)
    try:
        summary = run_pipeline(profile, run_dir)
    except Exception as error:  # a failing cell: its notebook is saved with the error shown
        print(f"error: a notebook failed; see the executed copy in {run_dir}\n{error}", file=sys.stderr)
        return 1
    print(summary.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
