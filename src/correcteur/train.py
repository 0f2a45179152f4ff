"""Instruction fine-tuning: the course's loop, and `train(TrainConfig)`, the loop to trust.

The first half mirrors the course ("Build a Large Language Model (From Scratch)", chapters 5
and 7): `calc_loss_batch`, `calc_loss_loader`, `evaluate_model`, `train_model_simple`,
`plot_losses` (the dataset and collate function are in `batches.py`).

The second half is the loop to trust on a rented GPU: one `TrainConfig`, gradient
accumulation and clipping, ReduceLROnPlateau, early stopping that ends *training* and keeps the
best weights, a seeded data order per epoch, and atomic checkpoints that resume exactly
(`checkpoint.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from correcteur import checkpoint as ckpt
from correcteur.batches import InstructionDataset, batch_order, collate_indices, optimizer_steps
from correcteur.distributed import ONE_RANK, Ranks, peer_failure, session
from correcteur.errors import UserError
from correcteur.files import CHECKPOINTS_DIR, load_entries, run_lock, write_json
from correcteur.generate import generate, text_to_token_ids, token_ids_to_text
from correcteur.lora import apply_lora, merge_lora
from correcteur.model import pick_device
from correcteur.weights import MODEL_CHOICES, load_base_model, model_directory

# ----------------------------------------------------------------------------- the course's loop


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: torch.nn.Module,
                    device: str | torch.device) -> torch.Tensor:
    """Mean cross-entropy over the target tokens that are not `-100`.

    Same value as the course's `cross_entropy(logits.flatten(0, 1), targets.flatten())`, but
    the package's models run their output head only where a target counts (the response), not
    on prompt and padding. Other models (your own chapter-4 `GPTModel`) get the course's path."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    if not getattr(model, "supports_logits_at", False):
        return F.cross_entropy(model(input_batch).flatten(0, 1).float(), target_batch.flatten())
    counted = target_batch != -100
    logits = model(input_batch, logits_at=counted)
    return F.cross_entropy(logits.float(), target_batch[counted])


def calc_loss_loader(data_loader, model: torch.nn.Module, device: str | torch.device,
                     num_batches: int | None = None) -> float:
    """Average batch loss over the first `num_batches` batches (all when None); NaN when empty."""
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model(model: torch.nn.Module, train_loader, val_loader, device: str | torch.device,
                   eval_iter: int | None) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model: torch.nn.Module, tokenizer, device: str | torch.device,
                              start_context: str, max_new_tokens: int = 50) -> str:
    """Greedy continuation of `start_context`, printed on one line (and returned)."""
    model.eval()
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate(model, encoded, max_new_tokens=max_new_tokens,
                         context_size=model.context_length, eos_id=tokenizer.eot_token)
    text = token_ids_to_text(token_ids, tokenizer)
    print(text.replace("\n", " "))
    model.train()
    return text


def train_model_simple(model: torch.nn.Module, train_loader, val_loader, optimizer, device,
                       num_epochs: int, eval_freq: int, eval_iter: int, start_context: str,
                       tokenizer) -> tuple[list[float], list[float], list[int]]:
    """The course's loop, as is: no early stopping, no checkpoints (see `train` for those)."""
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path: str | Path | None = None):
    """The course's loss plot (epochs below, tokens seen above), saved as PNG when `path` is given.

    Returns the figure, closed in pyplot so that a notebook shows it once: as the value of
    the cell's last line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()  # a second x-axis for tokens seen, on the same curve
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def plot_history(history: list[dict], path: str | Path | None = None):
    """`plot_losses` of a run's recorded evaluations (`TrainResult.history` or history.json)."""
    if not history:
        raise UserError("no evaluation was recorded: train for at least --eval-freq steps")
    return plot_losses(*([r[k] for r in history] for k in ("epochs_seen", "tokens_seen", "train_loss", "val_loss")),
                       path=path)



# ----------------------------------------------------------------------------- the full run


def _option(default, help: str, type=None, flag: str | None = None):
    """A TrainConfig field whose metadata builds its command-line option."""
    metadata = {"help": help, "type": type, "flag": flag}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved as `train_config.json` in the run directory."""

    model: str = _option("gpt2-medium", f"base model: {MODEL_CHOICES}; gpt2-cpu and gpt2-tiny are "
                                        "random-weight GPT-2s for --allow-scratch")
    data_dir: str = _option("data", "folder holding train.json and val.json (from `correcteur data`)", flag="--data")
    out_dir: str = _option("checkpoints", "folder that receives the run directory", flag="--out")
    run_name: str | None = _option(None, "run directory inside --out; none: the model name (+ -loraR with LoRA)", type=str)
    models_dir: str = _option(str(CHECKPOINTS_DIR), "where downloaded base weights live (fetched by fetch.py; "
                              "$CORRECTEUR_HOME/checkpoints, else the checkout's, else the user's data folder)")
    allow_scratch: bool = _option(False, "train from random weights when no pretrained weights exist (says so loudly)")
    prompt_style: str = _option("alpaca", "prompt template of prompt.build_prompt: alpaca or short")
    lr: float = _option(5e-5, "AdamW learning rate")
    weight_decay: float = _option(0.1, "AdamW weight decay")
    num_epochs: int = _option(5, "passes over the training set")
    batch_size: int = _option(8, "examples per micro-batch and process (under torchrun, the global batch is "
                                 "this x the number of processes)")
    grad_accum_steps: int = _option(1, "micro-batches per optimizer step (effective batch = batch_size x "
                                       "processes x this)")
    eval_freq: int = _option(5, "evaluate every this many optimizer steps")
    eval_iter: int = _option(5, "batches of train and of validation data per evaluation")
    patience: int = _option(4, "stop training after this many evaluations without a better validation loss")
    lr_factor: float = _option(0.5, "ReduceLROnPlateau: multiply the learning rate by this on a plateau")
    lr_patience: int = _option(2, "ReduceLROnPlateau: evaluations without improvement before reducing")
    max_grad_norm: float = _option(1.0, "clip the gradient norm to this (0 = no clipping)")
    allowed_max_length: int | None = _option(
        None, "longest example in tokens, longer ones are dropped and counted; none: the model's context", type=int)
    mask_instruction: bool = _option(True, "leave the prompt's tokens out of the loss")
    group_by_length: bool = _option(False, "batch examples of similar length together (less padding)")
    seed: int = _option(123, "seed of initialisation, data order and dropout")
    device: str = _option("auto", "auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    compile: bool = _option(False, "torch.compile the model (CUDA; slow start, faster steps)")
    lora_rank: int = _option(0, "LoRA rank (0 = full fine-tuning)")
    lora_alpha: float = _option(16.0, "LoRA alpha (scale = alpha / rank)")
    checkpoint_every: int = _option(100, "save the resumable last.pt every this many steps")
    max_steps: int | None = _option(None, "stop after this many optimizer steps (resumable)", type=int)
    max_minutes: float | None = _option(None, "stop after this many minutes of training (resumable)", type=float)

    def __post_init__(self) -> None:
        directory = model_directory(self.model)
        if directory is not None:  # absolute, so that the checkpoint finds its base from anywhere
            self.model = str(directory)
        positive = {"lr": self.lr, "num_epochs": self.num_epochs, "batch_size": self.batch_size,
                    "grad_accum_steps": self.grad_accum_steps, "eval_freq": self.eval_freq,
                    "eval_iter": self.eval_iter, "patience": self.patience, "checkpoint_every": self.checkpoint_every}
        bad = [f"{name}={value}" for name, value in positive.items() if not value > 0]
        bad += [f"{name}={value}" for name, value in (("weight_decay", self.weight_decay), ("lora_rank", self.lora_rank),
                                                       ("max_grad_norm", self.max_grad_norm)) if value < 0]
        if bad:
            raise UserError(f"invalid training settings: {', '.join(bad)} (counts and the learning rate must be "
                            "positive; weight decay, LoRA rank and clipping may be 0, never negative)")

    @property
    def run_dir(self) -> Path:
        name = self.run_name or Path(self.model).name + (f"-lora{self.lora_rank}" if self.lora_rank else "")
        return Path(self.out_dir) / name


# Settings a resumed run may change: budgets and where it runs, not what it computes.
RESUMABLE_CHANGES = {"max_steps", "max_minutes", "checkpoint_every", "device", "compile", "num_epochs"}


@dataclass
class TrainState:
    """Where a run stands; everything in it goes into last.pt."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already done in `epoch`
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    best_val_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None  # "early_stopping" or "completed" once training is over


@dataclass
class TrainResult:
    model: torch.nn.Module  # with the best weights (merged when LoRA)
    history: list[dict]
    run_dir: Path
    summary: dict


def autocast_for(device: torch.device):
    """bf16 autocast on GPUs that support it; full precision elsewhere. (TF32 is left as the
    user set it: on GPUs with bf16, autocast already runs the matmuls in bf16.)"""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_memory_mb(device: torch.device, previous: float = 0.0) -> dict:
    """Largest resident memory seen so far (sampled: pass the previous value) and CUDA's peak."""
    memory = {"ram_mb": max(previous, psutil.Process().memory_info().rss / 2**20)}
    if device.type == "cuda":
        memory["cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return memory


def load_split(data_dir: str | Path, split: str) -> list[dict]:
    """A JSON list of instruction entries, checked enough to fail early with a useful message."""
    path = Path(data_dir) / f"{split}.json"
    if not path.is_file():
        raise UserError(f"no {path}: build the dataset first with `python -m correcteur data`, "
                        "or point --data at the folder that holds train.json and val.json")
    data = load_entries(path)
    required = {"instruction", "input", "output"}
    if not data or not all(required <= e.keys() for e in data):
        raise UserError(f"{path} must be a non-empty JSON list of entries with keys {sorted(required)}")
    return data


def data_input_prefix(data_dir: str | Path) -> str:
    """The prefix the dataset puts before every input (manifest.json), which every prompt of
    the model must carry; none for files that came without a manifest."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.is_file():
        return ""
    return json.loads(manifest.read_text(encoding="utf-8")).get("config", {}).get("input_prefix", "")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _steps_of_epoch(dataset: InstructionDataset, config: TrainConfig, epoch: int,
                    ranks: Ranks) -> list[list[list[int]]]:
    """The epoch's optimizer steps of global micro-batches (every rank's examples): one
    process with the global batch size sees the same."""
    return optimizer_steps(dataset.lengths, config.batch_size * ranks.world_size, config.grad_accum_steps,
                           config.seed, epoch, config.group_by_length)


def _collate_shards(dataset: InstructionDataset, batches: list[list[int]], pad: int, mask_instruction: bool,
                    ranks: Ranks) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[bool]]:
    """This rank's share of each global batch, collated, and whether it owns one. A rank left
    without examples (a last batch smaller than the ranks) computes the batch's first one with
    weight 0: under DDP every rank runs every backward pass."""
    shards = [ranks.shard(indices) for indices in batches]
    micro = [collate_indices(dataset, shard or indices[:1], pad, mask_instruction)
             for shard, indices in zip(shards, batches, strict=True)]
    return micro, [bool(shard) for shard in shards]


def _build_model(config: TrainConfig, model, tokenizer, base_info: dict | None):
    """The base model and tokenizer (given, or loaded by weights.py) and what they are."""
    if model is not None:
        return model, tokenizer, base_info or {"name": config.model, "pretrained": None, "source": "given by the caller"}
    model, tokenizer, info = load_base_model(config.model, config.models_dir, config.allow_scratch, config.seed)
    return model, tokenizer, dict(info)


def _check_resumable(saved: dict, config: TrainConfig, path: Path, saved_ranks: int, ranks: int) -> None:
    """Refuse what would change the run's computation. The number of processes may change
    when the global batch (processes x --batch-size) does not."""
    changed = [k for k, v in dataclasses.asdict(config).items()
               if k not in RESUMABLE_CHANGES | {"batch_size"} and saved.get(k) != v]
    details = [f"{k}: {saved.get(k)!r} in the checkpoint, {getattr(config, k)!r} now" for k in changed]
    if saved.get("batch_size") * saved_ranks != config.batch_size * ranks:
        details.append(f"batch: {saved_ranks} process(es) x {saved.get('batch_size')} in the checkpoint, "
                       f"{ranks} x {config.batch_size} now (keep processes x --batch-size the same)")
    if details:
        raise UserError(f"{path} belongs to a different run ({', '.join(details)}); resume with the same settings "
                        "or start a new run with another --run-name")


class _DeferInterrupt:
    """Turn the first Ctrl-C into a request honoured between steps, so the checkpoint written
    on the way out is never half an optimizer update. A second Ctrl-C interrupts at once.

    Under torchrun (`several_ranks`) each rank gets the terminal's Ctrl-C and then torchrun's
    own SIGINT or SIGTERM: every one of them is a request, and torchrun kills the ranks that
    have not ended 30 s later."""

    def __init__(self, several_ranks: bool = False):
        self.requested = False
        self.signals = (signal.SIGINT, signal.SIGTERM) if several_ranks else (signal.SIGINT,)
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if not self.requested:
            tqdm.write("Ctrl-C: stopping after this step and saving last.pt"
                       + ("" if len(self.signals) > 1 else " (press again to abort now)"))
        self.requested = True
        if len(self.signals) == 1:
            signal.signal(signum, self._previous[signum])

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: keep the default behaviour
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(ValueError):
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
        return False


def should_stop(config: TrainConfig, state: TrainState, elapsed_s: float, interrupted: bool) -> str | None:
    """Why training ends before the next step, or None to go on: the loop's one stop test."""
    if interrupted:
        return "interrupted"
    if state.bad_evals >= config.patience:
        return "early_stopping"
    if state.epoch >= config.num_epochs:
        return "completed"
    if config.max_steps is not None and state.step >= config.max_steps:
        return "budget"
    if config.max_minutes is not None and elapsed_s >= 60 * config.max_minutes:
        return "budget"
    return None


def train(config: TrainConfig, model: torch.nn.Module | None = None, tokenizer=None,
          base_info: dict | None = None, resume: bool = False) -> TrainResult:
    """Fine-tune on `config.data_dir`'s train/val split; writes train_config.json, tokenizer/,
    history.json, summary.json, best.pt and last.pt in `config.run_dir`. Pass `model` and `tokenizer` (and
    `base_info`, what `weights.load_base_model` said of them) to train a model already loaded.

    The run folder is locked (`files.run_lock`) from the check that it holds no run (or the
    one to resume) to the last file written: a second run started into it meanwhile is refused
    instead of leaving the folder with the config of one and the weights of the other.

    Started by torchrun (`distributed.py`), every process runs this with its share of each
    batch; rank 0 alone takes the lock and writes. A rank that dies or cannot be reached ends
    the others with a UserError; the last checkpoint stays as it was."""
    with session(pick_device(config.device)) as ranks:
        try:
            with run_lock(config.run_dir, "training") if ranks.is_main else contextlib.nullcontext():
                return _train(config, model, tokenizer, base_info, resume, ranks)
        except Exception as error:
            if not ranks.active or (why := peer_failure(error)) is None:
                raise
            raise UserError(f"rank {ranks.rank} of {ranks.world_size}: another rank stopped or cannot be reached "
                            f"({why}); every rank ends here. The last checkpoint, {config.run_dir / 'last.pt'}, "
                            "is intact: run the same command with --resume to continue") from None


def _train(config: TrainConfig, model: torch.nn.Module | None, tokenizer, base_info: dict | None,
           resume: bool, ranks: Ranks) -> TrainResult:
    run_dir, last_path = config.run_dir, config.run_dir / "last.pt"
    saved = _saved_run(config, last_path, resume, ranks)
    splits = {name: load_split(config.data_dir, name) for name in ("train", "val")}
    device = ranks.device
    _seed_everything(config.seed)
    model, tokenizer, base_info = _build_model(config, model, tokenizer, base_info)
    if base_info["pretrained"] is False:
        print("!" * 72 + f"\n!! {config.model}: NO PRETRAINED WEIGHTS, training from random "
              "initialisation\n" + "!" * 72)
    if config.lora_rank:
        apply_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, seed=config.seed)
    model.to(device)
    input_prefix = data_input_prefix(config.data_dir)
    if saved is not None and saved["meta"].get("input_prefix", "") != input_prefix:
        raise UserError(f"the dataset's input prefix changed since {last_path} was saved "
                        f"({saved['meta'].get('input_prefix', '')!r} then, {input_prefix!r} now): resume with the "
                        "same data folder, or start a new run")
    meta = {"model_cfg": model.cfg, "family": model.family, "model_name": base_info["name"],
            "tokenizer": tokenizer.name, "prompt_style": config.prompt_style, "base": base_info,
            "input_prefix": input_prefix, "ranks": ranks.world_size}
    train_data, val_data = _datasets(splits, tokenizer, config, model.context_length, input_prefix)
    pad = tokenizer.eot_token
    # The same batches at every evaluation, so that successive losses compare; global ones, so
    # that the losses do not depend on the number of ranks.
    eval_batches = {}
    for name, ds in (("train", train_data), ("val", val_data)):
        batches = batch_order(ds.lengths, config.batch_size * ranks.world_size, config.seed, 0)[:config.eval_iter]
        micro, owned = _collate_shards(ds, batches, pad, config.mask_instruction, ranks)
        eval_batches[name] = list(zip(micro, ranks.token_weights([t for _, t in micro], owned), strict=True))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience)
    state = TrainState()
    if saved is not None:
        state = TrainState(**ckpt.restore_training(saved, model, optimizer, scheduler, last_path,
                                                   _steps_of_epoch(train_data, config, saved["state"]["epoch"], ranks)))
    forward_model = torch.compile(model) if config.compile else model
    step_model = ranks.wrap(forward_model)  # DDP over several ranks; evaluation needs no exchange
    amp = autocast_for(device)
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_train_config(run_dir, dataclasses.asdict(config))
        ckpt.save_run_tokenizer(tokenizer, run_dir, model.context_length)

    steps_per_epoch = len(_steps_of_epoch(train_data, config, 0, ranks))
    total = min(config.num_epochs * steps_per_epoch, config.max_steps or math.inf)
    # A resumed run's peak RAM includes the steps before the interruption (kept in its history);
    # CUDA's peak counts this process only.
    memory = peak_memory_mb(device, max((r.get("peak_ram_mb", 0.0) for r in state.history), default=0.0))
    start = time.perf_counter() - state.elapsed_s
    epoch_steps = _steps_of_epoch(train_data, config, state.epoch, ranks)
    if state.step_in_epoch >= len(epoch_steps) and state.bad_evals < config.patience:
        # A last.pt saved at the very end of an epoch by earlier versions: start the next one.
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        epoch_steps = _steps_of_epoch(train_data, config, state.epoch, ranks)
    bar = tqdm(total=total, initial=min(state.step, total), desc="train", unit="step", dynamic_ncols=True,
               disable=not ranks.is_main)
    model.train()
    with _DeferInterrupt(ranks.active) as interrupt:
        # One decision for every rank (rank 0's), taken together before each step.
        while (reason := ranks.agree(should_stop(config, state, time.perf_counter() - start,
                                                 interrupt.requested))) is None:
            micro, owned = _collate_shards(train_data, epoch_steps[state.step_in_epoch], pad,
                                           config.mask_instruction, ranks)
            loss = train_step(step_model, optimizer, params, micro, device, amp, config.max_grad_norm, state,
                              ranks, owned)
            state.step_in_epoch += 1
            state.elapsed_s = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
            if state.step % config.eval_freq == 0:
                memory = peak_memory_mb(device, memory["ram_mb"])
                record = _evaluate(forward_model, eval_batches, device, amp, optimizer, scheduler, state,
                                   memory, steps_per_epoch, ranks)
                bar.set_postfix(train=f"{record['train_loss']:.3f}", val=f"{record['val_loss']:.3f}",
                                lr=f"{record['lr']:.1e}")
                if state.bad_evals == 0 and ranks.is_main:
                    _save_best(model, meta, state, config)
            if state.step_in_epoch == len(epoch_steps) and state.bad_evals < config.patience:  # the epoch ran to its end
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                epoch_steps = _steps_of_epoch(train_data, config, state.epoch, ranks)
                if ranks.is_main:
                    generate_sample(model, tokenizer, val_data, device)
            if state.step % config.checkpoint_every == 0 and ranks.is_main:
                _save_last(last_path, model, optimizer, scheduler, state, config, meta, epoch_steps)
    bar.close()
    if reason == "interrupted":
        message = f"training stopped at step {state.step}, saved in {last_path}; resume it with --resume"
        if ranks.is_main:
            _save_last(last_path, model, optimizer, scheduler, state, config, meta, epoch_steps)
            print(message)
        ranks.barrier()  # no rank leaves (torchrun would then end rank 0) before last.pt is written
        raise KeyboardInterrupt(message)
    if ranks.is_main and state.step and not (run_dir / "best.pt").exists():
        # Stopped before its first evaluation: the only weights there are become best.pt, so the
        # run can be used; no state changes, so a resumed run still equals an uninterrupted one.
        print(f"no evaluation in {state.step} steps (--eval-freq {config.eval_freq}): saving the last weights as best.pt")
        _save_best(model, meta, state, config)
    state.stop_reason = reason if reason in ("early_stopping", "completed") else None  # None: a budget
    if ranks.is_main:
        _save_last(last_path, model, optimizer, scheduler, state, config, meta, epoch_steps)
    ranks.barrier()  # best.pt is written: every rank may read it
    return _finish(model, config, state, meta, memory, device, ranks)


def _saved_run(config: TrainConfig, last_path: Path, resume: bool, ranks: Ranks) -> dict | None:
    """last.pt's payload when resuming (checked against `config`); None for a new run."""
    if not resume:
        if last_path.exists():
            raise UserError(f"{config.run_dir} already holds a run: continue it with --resume, or pick another "
                            "--run-name or --out")
        return None
    if not last_path.is_file():
        raise UserError(f"nothing to resume: no {last_path}; start the run without --resume")
    saved = ckpt.load_checkpoint(last_path)
    _check_resumable(saved["config"], config, last_path, saved["meta"].get("ranks", 1), ranks.world_size)
    return saved


def _datasets(splits: dict, tokenizer, config: TrainConfig, context_length: int,
              input_prefix: str) -> tuple[InstructionDataset, InstructionDataset]:
    max_length = min(config.allowed_max_length or context_length, context_length)
    datasets = []
    for name in ("train", "val"):
        dataset = InstructionDataset(splits[name], tokenizer, config.prompt_style, max_length, input_prefix)
        if dataset.dropped:
            print(f"{name}: dropped {dataset.dropped} examples longer than {max_length} tokens")
        if not len(dataset):
            raise UserError(f"every {name} example is longer than {max_length} tokens; "
                            "raise --allowed-max-length (up to the model's context)")
        datasets.append(dataset)
    return datasets[0], datasets[1]


def _save_last(path: Path, model, optimizer, scheduler, state: TrainState, config: TrainConfig, meta: dict,
               epoch_steps: list) -> None:
    ckpt.save_checkpoint(path, ckpt.training_state(model, optimizer, scheduler, dataclasses.asdict(state),
                                                   dataclasses.asdict(config), meta, epoch_steps))
    write_json(path.parent / "history.json", state.history)


def _save_best(model, meta: dict, state: TrainState, config: TrainConfig) -> None:
    """best.pt (the whole model, LoRA merged in) and, for a LoRA run, adapters.pt alone."""
    ckpt.save_checkpoint(config.run_dir / "best.pt", ckpt.inference_state(
        model, meta, state.step, state.best_val_loss, lora=bool(config.lora_rank)))
    if config.lora_rank:
        ckpt.save_checkpoint(config.run_dir / "adapters.pt", ckpt.adapters_state(
            model, meta, state.step, state.best_val_loss, dataclasses.asdict(config)))


def train_step(model, optimizer, params, micro_batches, device, amp, max_grad_norm: float,
               state: TrainState, ranks: Ranks = ONE_RANK, owned: list[bool] | None = None) -> float:
    """One optimizer step over its micro-batches; returns the step's mean loss.

    Under DDP the micro-batches are this rank's shards (`owned` False: a stand-in, weight 0),
    each mean loss weighted by the rank's share of the global micro-batch's response tokens
    (`Ranks.token_weights`: exactly 1 on one process), so the gradients equal one process's."""
    optimizer.zero_grad(set_to_none=True)
    owned = owned or [True] * len(micro_batches)
    weights = ranks.token_weights([targets for _, targets in micro_batches], owned)
    step_loss = 0.0
    for i, ((inputs, targets), weight) in enumerate(zip(micro_batches, weights, strict=True)):
        with ranks.no_sync(model, skip=i < len(micro_batches) - 1):  # the gradients are exchanged once a step
            with amp:
                loss = calc_loss_batch(inputs, targets, model, device) * weight / len(micro_batches)
            loss.backward()
        step_loss += loss.item()
    sizes = [inputs.numel() if own else 0 for (inputs, _), own in zip(micro_batches, owned, strict=True)]
    *losses, tokens = ranks.all_sum([step_loss / ranks.world_size, sum(sizes)])
    state.tokens_seen += int(tokens)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    state.step += 1
    return losses[0]


def _eval_loss(model, batches: list, device, ranks: Ranks) -> float:
    """`calc_loss_loader` over global batches whose shards the ranks share: each batch's mean
    token loss is the sum of the shards' means weighted by their share of its tokens."""
    total = 0.0
    for (inputs, targets), weight in batches:
        if weight:
            total += calc_loss_batch(inputs, targets, model, device).item() * (weight / ranks.world_size)
    return ranks.all_sum([total])[0] / len(batches)


def _evaluate(model, eval_batches, device, amp, optimizer, scheduler, state: TrainState, memory: dict,
              steps_per_epoch: int, ranks: Ranks) -> dict:
    """Evaluate, step the scheduler and the early-stopping counter, and record it all (every
    rank alike: the losses are reduced over the ranks)."""
    model.eval()
    with amp, torch.no_grad():
        train_loss, val_loss = [_eval_loss(model, eval_batches[name], device, ranks) for name in ("train", "val")]
    model.train()
    record = {"step": state.step, "epoch": state.epoch,
              "epochs_seen": round(state.epoch + state.step_in_epoch / steps_per_epoch, 4),
              "train_loss": train_loss, "val_loss": val_loss,
              "tokens_seen": state.tokens_seen, "lr": optimizer.param_groups[0]["lr"],
              "wall_time_s": round(state.elapsed_s, 3), **{f"peak_{k}": round(v, 1) for k, v in memory.items()}}
    state.history.append(record)
    scheduler.step(val_loss)
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_step, state.bad_evals = val_loss, state.step, 0
    else:
        state.bad_evals += 1
    return record


def generate_sample(model, tokenizer, dataset: InstructionDataset, device, max_new_tokens: int = 48) -> None:
    """Print the model's answer to the first validation prompt, to see training at work."""
    ids, prompt_length = dataset[0]
    model.eval()
    idx = torch.tensor([ids[:prompt_length]], device=device)
    out = generate(model, idx, max_new_tokens=max_new_tokens, context_size=model.context_length,
                   eos_id=tokenizer.eot_token)
    model.train()
    tqdm.write("sample: " + tokenizer.decode(out[0, prompt_length:].tolist()).replace("\n", " "))


def _finish(model, config: TrainConfig, state: TrainState, meta: dict, memory: dict, device,
            ranks: Ranks) -> TrainResult:
    """Put the best weights back, write summary.json (rank 0) and say how it went."""
    run_dir = config.run_dir
    best_path = run_dir / "best.pt"
    if config.lora_rank:
        model = merge_lora(model)
    if best_path.is_file():
        model.load_state_dict(ckpt.load_checkpoint(best_path)["model"])
    memory = peak_memory_mb(device, memory["ram_mb"])
    summary = {
        "stop_reason": state.stop_reason or "budget", "steps": state.step, "epochs_done": state.epoch,
        "best_step": state.best_step, "best_val_loss": state.best_val_loss if state.history else None,
        "tokens_seen": state.tokens_seen, "train_seconds": round(state.elapsed_s, 1),
        "tokens_per_s": round(state.tokens_seen / max(state.elapsed_s, 1e-9), 1),
        "device": str(device), "ranks": ranks.world_size, "pretrained": meta["base"]["pretrained"],
        **{f"peak_{k}": round(v, 1) for k, v in memory.items()},
    }
    if ranks.is_main:
        write_json(run_dir / "summary.json", summary)
    best = f"best val loss {state.best_val_loss:.4f} at step {state.best_step}" if state.history else "no evaluation"
    print(f"{summary['stop_reason']} after {state.step} steps ({state.elapsed_s / 60:.1f} min, "
          f"{summary['tokens_per_s']:.0f} tokens/s); {best}; peak RAM {memory['ram_mb']:.0f} MB"
          + (f", CUDA {memory['cuda_mb']:.0f} MB" if "cuda_mb" in memory else "") + f"; saved in {run_dir}")
    return TrainResult(model=model, history=state.history, run_dir=run_dir, summary=summary)


def resumed_config(explicit: dict) -> TrainConfig:
    """The config `--resume` continues with: the run's saved train_config.json (an older run's
    config.json), with the options given explicitly on the command line (`explicit`) applied
    over it; `train` then refuses any of them that would change what the run computes (outside
    `RESUMABLE_CHANGES`)."""
    config = TrainConfig(**explicit)
    saved = ckpt.read_train_config(config.run_dir)
    if saved is None:
        return config  # train() explains that there is nothing to resume
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in saved.items() if k in names}, **explicit})
