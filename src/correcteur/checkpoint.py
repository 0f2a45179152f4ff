"""Checkpoints a crash cannot corrupt, that resume exactly and that load for inference.

A run directory holds two kinds of `.pt` files, both plain `torch.save` dictionaries that
`torch.load(weights_only=True)` reads (no pickled code):

- `last.pt` (`kind: "resume"`): everything `train(..., resume=True)` needs to continue as if it
  had never stopped: the trainable weights (LoRA adapters only, when LoRA), the optimizer and
  scheduler, the step, epoch and position in the epoch, the RNG states, the history and the
  early-stopping counters, the config, and the epoch's batch order (to notice changed data).
- `best.pt` (`kind: "inference"`): the best weights (LoRA merged in) with what it takes to
  rebuild the model and its prompt: model config, family, model name, tokenizer name,
  prompt style, input prefix. `export_half` writes the same in bf16/fp16, half the size.

The functions here take and return plain dictionaries (the training loop's state and config as
`dataclasses.asdict` gives them), so this module knows nothing of the loop that fills them.

A run folder carries what it takes to use it anywhere: the training config as
`train_config.json` (`config.json` in older folders, the name Hugging Face gives a model's
config), the tokenizer in Hugging Face's layout (`tokenizer/`), and the base model recorded by
name and sha256 (`weights.find_base` finds it again for adapters.pt). Older folders, without
`tokenizer/`, get their tokenizer by the name the checkpoint recorded.

Every file is written to a temporary file in the same folder and renamed over the old one
(`os.replace` is atomic), so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import random
import warnings
from pathlib import Path

import torch

from correcteur.errors import UserError
from correcteur.files import atomic_write, run_lock, write_json
from correcteur.llama import LlamaModel
from correcteur.lora import apply_lora, load_lora_state_dict, lora_state_dict, merge_lora
from correcteur.model import GPTModel
from correcteur.tokenizer import (
    LlamaTokenizer,
    get_tokenizer,
    is_gpt2,
    load_tokenizer_folder,
    save_tokenizer,
)
from correcteur.weights import find_base, load_base_model

FORMAT_VERSION = 1
HALF_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
TRAIN_CONFIG = "train_config.json"
OLD_TRAIN_CONFIG = "config.json"  # before train_config.json
TOKENIZER_DIR = "tokenizer"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    return atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dictionary on the CPU; a clear error for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch's remarks on foreign pickles: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise UserError(_unreadable_message(path, error)) from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not a correcteur checkpoint (format {FORMAT_VERSION}); "
                        "train with `python -m correcteur train` to make one")
    return payload


def _unreadable_message(path: Path, error: Exception) -> str:
    """Why torch could not read `path`, in this project's words. Never torch's own text: it
    suggests loading with weights_only=False, which runs whatever code the file holds, and a
    checkpoint of this project never needs it (tensors and plain data only)."""
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        why = "it holds Python objects other than tensors and plain data, which this project never saves"
    else:
        why = "it is cut short, damaged, or not a file torch.save wrote"
    return (f"{path} is not a checkpoint of this project, or it is damaged ({why}); use the best.pt or "
            "last.pt of a training run (`python -m correcteur train` makes them), or copy the file again "
            "if it was cut short on the way")


# ----------------------------------------------------------------------------- the run folder


def read_train_config(run_dir: str | Path) -> dict | None:
    """The training config a run folder holds: train_config.json, else an older folder's
    config.json; None when it has neither."""
    for name in (TRAIN_CONFIG, OLD_TRAIN_CONFIG):
        path = Path(run_dir) / name
        if path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                raise UserError(f"{path} is not valid JSON ({error}); the run folder is damaged") from None
            if name == TRAIN_CONFIG or "data_dir" in saved:  # a Hugging Face config.json is no run's
                return saved
    return None


def save_train_config(run_dir: str | Path, config: dict) -> Path:
    """Write train_config.json; an older folder's config.json (the same config) goes."""
    path = write_json(Path(run_dir) / TRAIN_CONFIG, config)
    old = Path(run_dir) / OLD_TRAIN_CONFIG
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        if "data_dir" in json.loads(old.read_text(encoding="utf-8")):
            old.unlink()
    return path


def save_run_tokenizer(tokenizer, run_dir: str | Path, context_length: int) -> Path | None:
    """Copy the tokenizer into the run folder (`tokenizer/`, Hugging Face's layout), so the run
    loads without its base model. Tokenizers of neither kind the package makes (a test's own)
    are not copied; a copy already there (a resumed run) is kept."""
    folder = Path(run_dir) / TOKENIZER_DIR
    if not (is_gpt2(tokenizer) or isinstance(tokenizer, LlamaTokenizer)):
        return None
    if not (folder / "tokenizer_config.json").is_file():
        save_tokenizer(tokenizer, folder, context_length)
    return folder


def run_tokenizer(path: Path, name: str):
    """The tokenizer of the checkpoint at `path`: the copy in its folder, else by `name`."""
    folder = path.parent / TOKENIZER_DIR
    return load_tokenizer_folder(folder) if folder.is_dir() else get_tokenizer(name)


# ----------------------------------------------------------------------------- resumable state


def training_state(model, optimizer, scheduler, state: dict, config: dict, meta: dict,
                   data_order: list) -> dict:
    """The payload of last.pt: the loop's `state` and `config` (plain dicts) with everything
    that is not plain data (weights, optimizer, scheduler, random number generators)."""
    weights = lora_state_dict(model) if config["lora_rank"] else model.state_dict()
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format_version": FORMAT_VERSION, "kind": "resume", "lora": bool(config["lora_rank"]),
        "model": weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "state": state, "rng": rng, "config": config,
        "meta": meta, "data_order": data_order,
    }


def restore_training(saved: dict, model, optimizer, scheduler, path: Path, data_order: list) -> dict:
    """Load last.pt's payload into a freshly built model, optimizer and scheduler; put the RNGs
    back; return the loop's state (a dict) to continue from."""
    if saved.get("kind") != "resume":
        raise UserError(f"{path} is not a resumable checkpoint; resume from a run's last.pt")
    if saved["meta"]["model_cfg"] != model.cfg:
        raise UserError(f"{path} was saved from a model with config {saved['meta']['model_cfg']}, "
                        f"not {model.cfg}: resume with the same --model")
    if saved["data_order"] != data_order:
        raise UserError(f"the training data changed since {path} was saved (its batches differ): "
                        "resume with the same data folder, or start a new run")
    _load_weights(model, saved["model"], saved["lora"], path)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return saved["state"]


def _load_weights(model, weights: dict, lora: bool, path: Path) -> None:
    if lora:
        load_lora_state_dict(model, weights)
        return
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"{path} does not fit this model ({str(error)[:300]}); was it saved from "
                        "another model size or family?") from None


# ----------------------------------------------------------------------------- inference


def inference_state(model, meta: dict, step: int, val_loss: float, lora: bool = False) -> dict:
    """The payload of best.pt: full weights, LoRA merged into a copy so training goes on."""
    if lora:
        model = merge_lora(copy.deepcopy(model))
    weights = _cpu_state_dict(model)
    return {"format_version": FORMAT_VERSION, "kind": "inference", "model": weights,
            "dtype": str(next(iter(weights.values())).dtype).removeprefix("torch."),
            "step": step, "val_loss": val_loss, **meta}


def adapters_state(model, meta: dict, step: int, val_loss: float, config: dict) -> dict:
    """The payload of adapters.pt: the LoRA weights alone (a few MB instead of the whole
    model) and what it takes to rebuild the base model around them (`load_for_inference`):
    its name and sha256 (`meta["base"]`), and where it was."""
    base = meta.get("base") or {}
    return {"format_version": FORMAT_VERSION, "kind": "adapters",
            "adapters": {k: v.detach().cpu() for k, v in lora_state_dict(model).items()},
            "lora": {"rank": config["lora_rank"], "alpha": config["lora_alpha"], "seed": config["seed"]},
            "base_model": {"name": base.get("name", config["model"]), "sha256": base.get("sha256"),
                           "path": base.get("path"), "allow_scratch": config["allow_scratch"],
                           "seed": config["seed"], "models_dir": str(Path(config["models_dir"]).resolve())},
            "step": step, "val_loss": val_loss, **meta}


def _base_with_adapters(payload: dict) -> torch.nn.Module:
    """The base model the adapters were trained on, adapters merged in."""
    base = payload["base_model"]
    # Older adapters.pt files lack models_dir; on another machine it may not exist: the default then.
    models_dir = base.get("models_dir") if Path(base.get("models_dir") or "").is_dir() else None
    where = {"models_dir": models_dir} if models_dir else {}
    model, _, info = load_base_model(find_base(base, **where), **where,
                                     allow_scratch=base["allow_scratch"], seed=base["seed"])
    if base.get("sha256") and info.get("sha256") not in (None, base["sha256"]):
        raise UserError(f"the base model {base['name']} now has other weights (sha256 {info['sha256']}, "
                        f"not {base['sha256']}) than the adapters were trained on: use best.pt instead")
    apply_lora(model, rank=payload["lora"]["rank"], alpha=payload["lora"]["alpha"], seed=payload["lora"]["seed"])
    load_lora_state_dict(model, payload["adapters"])
    return merge_lora(model)


def _cpu_state_dict(model) -> dict:
    """The state dict on the CPU with tied weights still one tensor, so saved once."""
    copies: dict[int, torch.Tensor] = {}
    weights = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in copies:
            copies[tensor.data_ptr()] = tensor.detach().cpu()
        weights[name] = copies[tensor.data_ptr()]
    return weights


def inference_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
        if not path.is_file():
            raise UserError(f"no best.pt in {path.parent}: the run has not evaluated yet; train "
                            "longer (at least --eval-freq steps) or pass a .pt file")
    return path


MODEL_CLASSES = {"gpt2": GPTModel, "llama": LlamaModel}


def _model_class(family: str):
    if family not in MODEL_CLASSES:
        raise UserError(f"unknown model family {family!r} in the checkpoint")
    return MODEL_CLASSES[family]


def _model_from_payload(payload: dict, path: Path, dtype: torch.dtype | None) -> torch.nn.Module:
    """The model a best.pt (or an adapters.pt) describes, in `dtype` (None: as stored)."""
    if payload.get("kind") == "adapters":
        return _base_with_adapters(payload).to(dtype or torch.float32).eval()
    if payload.get("kind") != "inference":
        raise UserError(f"{path} is a resumable training state, not a model for inference: use "
                        "the best.pt next to it (or the run directory)")
    missing = [key for key in ("family", "model_cfg", "model") if key not in payload]
    if missing:
        raise UserError(f"{path} does not say which model family, config or weights it holds (no "
                        f"{' or '.join(missing)}): it was not written by `python -m correcteur train`, or was edited")
    model = _model_class(payload["family"])(payload["model_cfg"])
    model.to(dtype or HALF_DTYPES.get(payload["dtype"], torch.float32))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise UserError(f"{path}: its weights do not match its own model config "
                        f"{payload['model_cfg']} ({str(error)[:300]}); the file was not written by "
                        "this version of correcteur or was edited") from None
    return model.eval()


def load_for_inference(path: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = torch.float32, tokenizer=None):
    """`(model, tokenizer, meta)` from a run directory or an inference `.pt` (also a half one).

    `dtype=None` keeps the stored precision; `tokenizer` overrides the one the checkpoint names."""
    path = inference_file(path)
    payload = load_checkpoint(path)
    model = _model_from_payload(payload, path, dtype)
    if device is not None:
        model.to(device)
    if tokenizer is None:
        tokenizer = run_tokenizer(path, payload["tokenizer"])
    meta = {k: v for k, v in payload.items() if k not in ("model", "adapters")}
    return model, tokenizer, meta


def export_half(path: str | Path, out: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write `path`'s inference checkpoint in half precision (about half the bytes) to `out`.

    The source's run folder is locked while it is read (`files.run_lock`): a run still training
    there would have its provisional best.pt exported as if it were the final one. The output
    needs no lock: it is one file written atomically, so two exports to it each leave a whole
    file (and `out` usually sits in that same run folder, locked with it)."""
    names = {v: k for k, v in HALF_DTYPES.items()}
    if dtype not in names:
        raise ValueError(f"export_half writes bfloat16 or float16, not {dtype}")
    path = inference_file(path)
    with source_lock(path.parent):
        payload = load_checkpoint(path)
        model = _model_from_payload(payload, path, dtype)  # tied weights stay one tensor
        return save_checkpoint(out, {**payload, "model": model.state_dict(), "dtype": names[dtype]})


def source_lock(folder: Path) -> contextlib.AbstractContextManager:
    """The run lock of a folder being read; none for a read-only one, which no run can write."""
    if folder.is_dir() and not os.access(folder, os.W_OK):
        return contextlib.nullcontext()
    return run_lock(folder, "half-precision export")
