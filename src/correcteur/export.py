"""A trained corrector for other tools: a Hugging Face directory, a GGUF file with an Ollama
Modelfile, and a model card.

`best.pt` is a dictionary only this package reads. `export_hf` writes what
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads with no code of ours: the
`config.json` of GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM, `model.safetensors`
under their parameter names (LoRA already merged: the inference checkpoint holds merged
weights), the tokenizer files (`tokenizer.save_tokenizer`) and a `generation_config.json` that
decodes greedily and stops where the corrector stops. `export_gguf` writes the same Llama-family
weights as llama.cpp lays them out (f16 or q8_0; query and key rows permuted for its rotary
embedding), with its architecture and tokenizer metadata, and a `Modelfile` that asks Ollama
the project's prompt at temperature 0.

Neither format carries the guard: it runs in `correcteur correct`, around the model. The model
card (`README.md`) says so, gives the thresholds tuned for the run and the metrics measured
with and without it, next to the copy baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from correcteur.checkpoint import inference_file, load_for_inference, read_train_config, source_lock
from correcteur.errors import UserError
from correcteur.files import atomic_write, write_json
from correcteur.guard import GUARD_FILE
from correcteur.llama import head_dim_of
from correcteur.prompt import correction_prompt, response_stops
from correcteur.tokenizer import bpe_tables, save_tokenizer
from correcteur.weights import HF_LAYER_NAMES, MODELS, registered_name

FORMATS = ("hf", "gguf")
GGUF_TYPES = ("f16", "q8_0")
PROMPT_SLOT = "\x00"  # stands for the text to correct while the prompt is turned into a template


def export(checkpoint: str | Path, out: str | Path, fmt: str = "hf", gguf_type: str = "f16",
           report: str | Path | None = None) -> list[Path]:
    """Export a run (its folder, best.pt or adapters.pt) to `out`; the files written.

    The source folder is locked while it is read, as for the half-precision export: a run still
    training there would have its provisional best.pt exported as the final one."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    path = inference_file(checkpoint)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the exported model")
    with source_lock(path.parent):
        model, tokenizer, meta = load_for_inference(path)
        card = model_card(meta, path.parent, fmt, gguf_type, report)
        if fmt == "hf":
            files = export_hf(model, tokenizer, meta, out)
        else:
            files = export_gguf(model, tokenizer, meta, out, gguf_type)
    return [*files, _write_text(out / "README.md", card)]


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------- Hugging Face


def hf_config(model, tokenizer) -> dict:
    """The `config.json` of the transformers class that computes what `model` computes."""
    cfg, tables = model.cfg, bpe_tables(tokenizer)
    if tables.vocab and len(tables.vocab) > cfg["vocab_size"]:
        raise UserError(f"the tokenizer has {len(tables.vocab)} tokens, more than the model's {cfg['vocab_size']}")
    ids = {"bos_token_id": tables.bos_id if tables.bos_id is not None else tables.eos_id,
           "eos_token_id": tables.eos_id, "pad_token_id": tables.eos_id}
    if model.family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": cfg["vocab_size"], "n_positions": cfg["context_length"],
                "n_embd": cfg["emb_dim"], "n_layer": cfg["n_layers"], "n_head": cfg["n_heads"],
                "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
                "torch_dtype": "float32", **ids}
    qwen = bool(cfg.get("qkv_bias"))
    scaling = cfg.get("rope_scaling")
    settings = {"architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
                "model_type": "qwen2" if qwen else "llama",
                "vocab_size": cfg["vocab_size"], "hidden_size": cfg["emb_dim"],
                "intermediate_size": cfg["hidden_dim"], "num_hidden_layers": cfg["n_layers"],
                "num_attention_heads": cfg["n_heads"], "num_key_value_heads": cfg["n_kv_groups"],
                "head_dim": head_dim_of(cfg), "max_position_embeddings": cfg["context_length"],
                "rms_norm_eps": _shortest(cfg["rms_norm_eps"]), "rope_theta": _shortest(cfg["rope_base"]),
                "rope_scaling": {"rope_type": "llama3", **scaling} if scaling else None,
                "hidden_act": "silu", "tie_word_embeddings": bool(cfg["tie_embeddings"]),
                "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float32", **ids}
    if not qwen:
        settings |= {"attention_bias": False, "mlp_bias": False}
    else:
        settings |= {"use_sliding_window": False, "max_window_layers": cfg["n_layers"]}
    return settings


def _shortest(value: float) -> float:
    """A setting read from float32 (a GGUF file) as written in the original: 1e-05, not
    9.999999747378752e-06; both are the same float32."""
    return float(str(np.float32(value)))


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """`model`'s weights under the names of its transformers class (tied head left out)."""
    weights = {}
    if model.family == "gpt2":
        weights |= {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.pos_emb.weight,
                    "transformer.ln_f.weight": model.final_norm.scale, "transformer.ln_f.bias": model.final_norm.shift}
        for i, block in enumerate(model.trf_blocks):
            att, ff, name = block.att, block.ff.layers, f"transformer.h.{i}"
            qkv = (att.W_query, att.W_key, att.W_value)
            weights |= {  # GPT-2's Conv1D layers hold (in, out), nn.Linear (out, in)
                f"{name}.ln_1.weight": block.norm1.scale, f"{name}.ln_1.bias": block.norm1.shift,
                f"{name}.ln_2.weight": block.norm2.scale, f"{name}.ln_2.bias": block.norm2.shift,
                f"{name}.attn.c_attn.weight": torch.cat([layer.weight for layer in qkv]).T,
                f"{name}.attn.c_attn.bias": torch.cat([_bias(layer) for layer in qkv]),
                f"{name}.attn.c_proj.weight": att.out_proj.weight.T, f"{name}.attn.c_proj.bias": att.out_proj.bias,
                f"{name}.mlp.c_fc.weight": ff[0].weight.T, f"{name}.mlp.c_fc.bias": ff[0].bias,
                f"{name}.mlp.c_proj.weight": ff[2].weight.T, f"{name}.mlp.c_proj.bias": ff[2].bias,
            }
    else:
        theirs = {ours: hf for hf, ours in HF_LAYER_NAMES.items()}
        for key, value in model.state_dict().items():
            parts = key.split(".")
            if parts[0] == "trf_blocks":
                weights[f"model.layers.{parts[1]}.{theirs['.'.join(parts[2:-1])]}.{parts[-1]}"] = value
            elif key == "out_head.weight":
                if not model.cfg["tie_embeddings"]:
                    weights["lm_head.weight"] = value
            else:
                weights[{"tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}[key]] = value
    return {k: v.detach().float().contiguous().clone() for k, v in weights.items()}


def _bias(layer: torch.nn.Linear) -> torch.Tensor:
    return layer.bias if layer.bias is not None else torch.zeros(layer.out_features)


def generation_config(tokenizer) -> dict:
    """Greedy decoding that stops at any special token, as `Corrector` does."""
    tables = bpe_tables(tokenizer)
    stops = sorted({tables.eos_id, *tables.special.values()})
    return {"do_sample": False, "num_beams": 1, "max_new_tokens": 256,
            "bos_token_id": tables.bos_id if tables.bos_id is not None else tables.eos_id,
            "eos_token_id": stops if len(stops) > 1 else stops[0], "pad_token_id": tables.eos_id}


def export_hf(model, tokenizer, meta: dict, out: str | Path) -> list[Path]:
    """Write `model` (float32) and `tokenizer` as a Hugging Face model directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = hf_state_dict(model)
    data = safetensors.torch.save(weights, metadata={"format": "pt"})
    files = [atomic_write(out / "model.safetensors", lambda file: file.write(data)),
             write_json(out / "config.json", hf_config(model, tokenizer)),
             write_json(out / "generation_config.json", generation_config(tokenizer))]
    return files + save_tokenizer(tokenizer, out, model.context_length)


# ----------------------------------------------------------------------------- GGUF and Ollama

GGUF_NAMES = {"att.W_query": "attn_q", "att.W_key": "attn_k", "att.W_value": "attn_v",
              "att.out_proj": "attn_output", "ff.fc1": "ffn_gate", "ff.fc2": "ffn_up", "ff.fc3": "ffn_down",
              "norm1": "attn_norm", "norm2": "ffn_norm"}


def llama_cpp_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleave each head's two halves of query/key rows, for llama.cpp's adjacent-pair RoPE
    of the `llama` architecture (`weights.unpermute` undoes it)."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """`model`'s weights under llama.cpp's names and in its layout (tied head left out)."""
    cfg = model.cfg
    arch = "qwen2" if cfg.get("qkv_bias") else "llama"
    tensors = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "trf_blocks":
            kind = GGUF_NAMES[".".join(parts[2:-1])]
            if arch == "llama" and kind in ("attn_q", "attn_k"):
                value = llama_cpp_permute(value, cfg["n_heads"] if kind == "attn_q" else cfg["n_kv_groups"])
            tensors[f"blk.{parts[1]}.{kind}.{parts[-1]}"] = value
        elif key != "out_head.weight" or not cfg["tie_embeddings"]:
            tensors[{"tok_emb.weight": "token_embd.weight", "final_norm.weight": "output_norm.weight",
                     "out_head.weight": "output.weight"}[key]] = value
    return {k: v.detach().float().contiguous() for k, v in tensors.items()}


def export_gguf(model, tokenizer, meta: dict, out: str | Path, gguf_type: str = "f16") -> list[Path]:
    """Write `model` as `out/model-<type>.gguf` for llama.cpp and a `Modelfile` for Ollama."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {gguf_type!r}; choose {' or '.join(GGUF_TYPES)}")
    if model.family != "llama":
        raise UserError("GGUF export is written for the Llama family (SmolLM2, Qwen2.5, Llama 3.2); export a "
                        "GPT-2 with --format hf, which llama.cpp's convert_hf_to_gguf.py turns into GGUF")
    cfg, tables = model.cfg, bpe_tables(tokenizer)
    if cfg.get("rope_scaling"):
        raise UserError("GGUF export does not write Llama 3's scaled rotary frequencies; use --format hf")
    if tables.pre is None:
        raise UserError("GGUF export needs a tokenizer whose pre-tokenizer llama.cpp names ('smollm' or "
                        "'gpt-2'), as SmolLM2's; use --format hf for this model")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model-{gguf_type}.gguf"
    quantized = gguf_type == "q8_0"
    writer = gguf.GGUFWriter(str(path) + ".part", "qwen2" if cfg.get("qkv_bias") else "llama")
    name = f"correcteur-{meta.get('model_name', 'model')}"
    writer.add_name(name)
    writer.add_basename(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantized else gguf.LlamaFileType.MOSTLY_F16)
    if quantized:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg["context_length"])
    writer.add_embedding_length(cfg["emb_dim"])
    writer.add_block_count(cfg["n_layers"])
    writer.add_feed_forward_length(cfg["hidden_dim"])
    writer.add_head_count(cfg["n_heads"])
    writer.add_head_count_kv(cfg["n_kv_groups"])
    writer.add_rope_freq_base(cfg["rope_base"])
    writer.add_rope_dimension_count(head_dim_of(cfg))
    if head_dim_of(cfg) != cfg["emb_dim"] // cfg["n_heads"]:
        writer.add_key_length(head_dim_of(cfg))
        writer.add_value_length(head_dim_of(cfg))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    _add_tokenizer(writer, tables, cfg["vocab_size"])
    for tensor_name, value in gguf_tensors(model).items():
        array = value.numpy()
        if array.ndim == 1:  # norms stay float32, as llama.cpp's converter leaves them
            writer.add_tensor(tensor_name, array)
        elif quantized and array.shape[-1] % 32 == 0:  # q8_0 packs rows in blocks of 32
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tensor_name, array.astype(np.float16))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        Path(str(path) + ".part").replace(path)
    finally:
        Path(str(path) + ".part").unlink(missing_ok=True)
    return [path, _write_text(out / "Modelfile", modelfile(path.name, tokenizer, meta, cfg["context_length"]))]


def _add_tokenizer(writer, tables, vocab_size: int) -> None:
    """llama.cpp's tokenizer keys; the model's extra embedding rows, if any, are unused tokens."""
    import gguf

    by_id = {i: t for t, i in tables.vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    special = set(tables.special.values())
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL if i in by_id
             else gguf.TokenType.UNUSED for i in range(vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tables.pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(tables.merges)
    writer.add_eos_token_id(tables.eos_id)
    writer.add_pad_token_id(tables.eos_id)
    if tables.bos_id is not None:
        writer.add_bos_token_id(tables.bos_id)
    writer.add_add_bos_token(False)  # the prompts were trained without one
    writer.add_add_eos_token(False)


def prompt_template(meta: dict, slot: str) -> str:
    """The prompt the model was trained on, with `slot` where the text to correct goes."""
    prompt = correction_prompt(PROMPT_SLOT, meta.get("prompt_style", "alpaca"), meta.get("input_prefix", ""))
    return prompt.replace(PROMPT_SLOT, slot)


def modelfile(gguf_name: str, tokenizer, meta: dict, context_length: int) -> str:
    """An Ollama Modelfile: the prompt as TEMPLATE, greedy decoding, the corrector's stops.
    Ollama's stop strings are single-line, so a stop that starts with a newline loses it."""
    tables = bpe_tables(tokenizer)
    eos = {i: t for t, i in tables.vocab.items()}[tables.eos_id]
    stops = dict.fromkeys([eos, *(s.lstrip("\n") for s in response_stops(meta.get("prompt_style", "alpaca")))])
    lines = ["# Ollama: `ollama create correcteur -f Modelfile`, then `ollama run correcteur \"Il a manger une pomme.\"`",
             "# The guard of `correcteur correct` does not run here (see README.md).",
             f"FROM ./{gguf_name}", f'TEMPLATE """{prompt_template(meta, "{{ .Prompt }}")}"""',
             "PARAMETER temperature 0", f"PARAMETER num_ctx {context_length}",
             *(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the model card

OUR_LICENSE = "MIT"
SCORE_COLUMNS = ("error_reduction", "harm_rate", "clean_preserved", "exact_match", "precision", "recall", "f0_5")


def base_description(meta: dict) -> tuple[str, str | None, str | None]:
    """The base model's name, its hub repository and its licence, as far as they are known."""
    base = meta.get("base") or {}
    name = base.get("name") or meta.get("model_name", "?")
    source = MODELS.get(registered_name(name) or "")
    if source is None:
        return Path(name).name, None, None
    if source.kind == "scratch":
        return name, None, OUR_LICENSE.lower()
    return name, source.upstream or source.origin, source.license


def model_card(meta: dict, run_dir: Path, fmt: str, gguf_type: str, report: str | Path | None) -> str:
    """README.md of an export: what the model is, how to ask it, its guard, its numbers, licences."""
    name, repo, license = base_description(meta)
    config = read_train_config(run_dir) or {}
    manifest = _json_or_none(Path(config["data_dir"]) / "manifest.json") if config.get("data_dir") else None
    guard = _json_or_none(run_dir / GUARD_FILE)
    report_path = Path(report) if report else run_dir / "report.json"
    if report and not report_path.is_file():
        raise UserError(f"--report {report_path} does not exist; give the report.json of `correcteur evaluate`")
    scores = _json_or_none(report_path)
    style = meta.get("prompt_style", "alpaca")
    front = ["---", f"license: {license or 'other'}", "language:", "- fr", "tags:", "- grammar-correction",
             "- french", "- correcteur", f"library_name: {'transformers' if fmt == 'hf' else 'gguf'}",
             "pipeline_tag: text-generation", *([f"base_model: {repo}"] if repo else []), "---", ""]
    lines = [f"# correcteur: {name} fine-tuned to correct French text", "",
             "A French spelling and grammar corrector trained with correcteur (instruction fine-tuning on pairs "
             "of sentences with and without errors, then evaluated next to doing nothing).", "",
             "## Base model and training", "",
             f"- base: `{name}`" + (f" ([{repo}](https://huggingface.co/{repo}))" if repo else "")
             + (f", weights sha256 `{meta['base']['sha256']}`" if (meta.get("base") or {}).get("sha256") else ""),
             f"- fine-tuning: {_training_words(config, meta)}",
             f"- data: {_data_words(manifest)}",
             f"- this file: {'Hugging Face safetensors, float32' if fmt == 'hf' else f'GGUF, {gguf_type}'}", "",
             "## Prompt", "",
             "The model was trained to answer this prompt, with the text to correct in place of `{text}`, "
             "and ends its answer with its end token:", "", "```", prompt_template(meta, "{text}") + "```", ""]
    lines += _usage(fmt, style)
    lines += _guard_section(guard)
    lines += _metrics_section(scores)
    lines += ["## Licences", "",
              f"- the weights derive from `{name}`: its licence applies ({license or 'see the base model'}).",
              f"- correcteur's code and its embedded training corpus: {OUR_LICENSE}.", ""]
    return "\n".join(front + lines)


def _json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _training_words(config: dict, meta: dict) -> str:
    how = f"LoRA rank {config['lora_rank']} (merged into the weights)" if config.get("lora_rank") else "all weights"
    steps = f", best validation loss {meta['val_loss']:.4f} at step {meta['step']}" if "val_loss" in meta else ""
    return how + (f", learning rate {config['lr']}" if "lr" in config else "") + steps


def _data_words(manifest: dict | None) -> str:
    if not manifest:
        return "not recorded (the run's data folder is gone)"
    counts = manifest.get("counts") or {}
    source = (manifest.get("config") or {}).get("source", manifest.get("source", "?"))
    return f"source `{source}`, " + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int))


def _usage(fmt: str, style: str) -> list[str]:
    if fmt == "gguf":
        return ["## Use", "", "```bash", "ollama create correcteur -f Modelfile",
                "ollama run correcteur \"Il a manger une pomme.\"", "```", "",
                "The Modelfile sets the prompt as its TEMPLATE, temperature 0 and the stops. With llama.cpp, "
                "give it the whole prompt above.", ""]
    return ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            "tokenizer = AutoTokenizer.from_pretrained(DIR)", "model = AutoModelForCausalLM.from_pretrained(DIR)",
            f"prompt = {prompt_template({'prompt_style': style}, '{text}')!r}.format(text=\"Il a manger une pomme.\")",
            "ids = tokenizer(prompt, return_tensors=\"pt\").input_ids",
            "out = model.generate(ids)  # greedy, stops at the end token (generation_config.json)",
            "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())", "```", ""]


def _guard_section(guard: dict | None) -> list[str]:
    lines = ["## The guard (not in this file)", "",
             "`correcteur correct` keeps only the edits it can vouch for: an edit budget, a French lexicon and "
             "the model's own preference for its correction over the input, by a margin. Loaded here alone, the "
             "model answers unguarded: it also changes some correct sentences. "]
    if not guard:
        return lines + ["No guard was tuned for this run (the defaults would apply).", ""]
    lines[-1] += "Thresholds tuned on the validation split for this run:"
    lines += ["", "| setting | value |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in guard["config"].items()), ""]
    return lines


def _metrics_section(report: dict | None) -> list[str]:
    if not report:
        return ["## Measured quality", "", "No evaluation report was given (`--report`, the report.json of "
                "`correcteur evaluate`).", ""]
    guarded = "guarded" if report.get("guard") else "unguarded"
    systems = {f"this model, {guarded}": report["model"], **report.get("baselines", {})}
    header = "| system | " + " | ".join(SCORE_COLUMNS) + " |"
    rows = [f"| {name} | " + " | ".join(_number(scores.get(k)) for k in SCORE_COLUMNS) + " |"
            for name, scores in systems.items()]
    return ["## Measured quality", "",
            f"On {report.get('n', '?')} held-out test entries; `copy` returns the input unchanged (error_reduction "
            "0 is doing nothing, negative is worse than nothing; harm_rate is the share of texts made worse).", "",
            header, "|---|" + "---:|" * len(SCORE_COLUMNS), *rows, ""]


def _number(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
