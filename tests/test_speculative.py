"""Speculative decoding: drafts from the input, verified in one pass, give greedy's tokens exactly.

Random models reject most drafts drawn from an unrelated text, so the drafts here are the
greedy answer itself, damaged by random insertions, deletions and substitutions: every pass
then accepts some tokens and rejects others, rows of a batch drift apart, and the cache is
rolled back and squeezed. Tiny models trained for a few seconds to copy (and fix one token)
check the same on models whose drafts are mostly right, as a corrector's are.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from correcteur.correct import Corrector
from correcteur.errors import UserError
from correcteur.generate import DecodingStats, draft_from, generate, generate_speculative, left_pad
from correcteur.llama import LlamaModel
from correcteur.model import GPTModel, KVCache
from correcteur.precision import with_precision

GPT_CFG = {"vocab_size": 50, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
           "drop_rate": 0.0, "qkv_bias": True}
LLAMA_CFG = {"vocab_size": 50, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_kv_groups": 2,
             "n_layers": 2, "hidden_dim": 48, "rope_base": 10000.0, "rms_norm_eps": 1e-5,
             "tie_embeddings": True}


def lively(model_class, cfg: dict, seed: int = 0) -> torch.nn.Module:
    """A random model with large weights, whose greedy answers vary from token to token."""
    torch.manual_seed(seed)
    model = model_class(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def damaged(tokens: list[int], rng: random.Random, vocab: int, edits: int) -> list[int]:
    out = list(tokens)
    for _ in range(edits):
        i = rng.randrange(len(out) + 1)
        kind = rng.choice(("insert", "delete", "replace"))
        if kind == "insert" or not out:
            out.insert(i, rng.randrange(vocab))
        elif kind == "delete":
            out.pop(min(i, len(out) - 1))
        else:
            out[min(i, len(out) - 1)] = rng.randrange(vocab)
    return out


@pytest.mark.parametrize("model_class, cfg", [(GPTModel, GPT_CFG), (LlamaModel, LLAMA_CFG)],
                         ids=["gpt2", "llama"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_random_models_give_greedy_tokens(model_class, cfg, use_cache):
    """Batches of one to four left-padded rows, end-of-text or not, every draft length, prompts
    from short to filling the context (the rows' holes must then be squeezed out)."""
    model = lively(model_class, cfg)
    rng = random.Random(1)
    accepted_more, squeezed = 0, 0
    select = KVCache.select

    def counting_select(cache, rows=None, positions=None):
        nonlocal squeezed
        squeezed += positions is not None
        select(cache, rows, positions)

    KVCache.select = counting_select
    try:
        for _ in range(40):
            rows = rng.randint(1, 4)
            n_new = rng.randint(1, 40)
            longest = 64 - n_new if rng.random() < 0.5 else 20
            prompts = [[rng.randrange(50) for _ in range(rng.randint(1, longest))] for _ in range(rows)]
            ids, mask = left_pad(prompts, 0)
            eos = rng.randrange(50) if rng.random() < 0.7 else None
            greedy = generate(model, ids, n_new, 64, eos_id=eos, attention_mask=mask, use_cache=use_cache)
            sources = [damaged(row, rng, 50, rng.randint(0, 5)) for row in greedy[:, ids.shape[1]:].tolist()]
            stats = DecodingStats()
            fast = generate_speculative(model, ids, n_new, 64, sources, eos_id=eos, attention_mask=mask,
                                        use_cache=use_cache, n_draft=rng.randint(1, 12), stats=stats)
            assert torch.equal(fast, greedy)
            assert len(stats.tokens) == rows and all(p >= 1 for p in stats.passes)
            accepted_more += stats.tokens_per_pass() > 1
    finally:
        KVCache.select = select
    assert accepted_more >= 30, "drafts from the damaged answers should mostly be accepted in part"
    if use_cache:
        assert squeezed > 0, "some batch should have needed its holes squeezed out"


def test_unpadded_single_row_and_a_perfect_draft(tokenizer):
    """Batch of one without a mask, as the course calls `generate`; a draft that is the answer
    itself is accepted whole: n_draft + 1 tokens per pass."""
    model = lively(GPTModel, {**GPT_CFG, "vocab_size": 50257, "context_length": 128})
    prompt = torch.tensor([tokenizer.encode("Ces une bonne idée, mais je ne suis pas sur.")])
    greedy = generate(model, prompt, 33, 128)
    stats = DecodingStats()
    fast = generate_speculative(model, prompt, 33, 128, [greedy[0, prompt.shape[1]:].tolist()],
                                n_draft=10, stats=stats)
    assert torch.equal(fast, greedy)
    assert stats.tokens == [33] and stats.passes == [3]  # 11 + 11 + 11


def test_stop_ids_and_whole_context_budgets_as_in_generate():
    """Rows end on end-of-text or another stop id, the other rows going on; a budget of the whole
    context slides the window, as greedy `generate` does."""
    model = lively(GPTModel, GPT_CFG)
    prompt = torch.randint(0, 50, (2, 60), generator=torch.Generator().manual_seed(3))
    plain = generate(model, prompt, 10, 64)[:, 60:].tolist()
    stop, eos = plain[0][4], plain[1][6]  # row 0 ends on its 5th token, row 1 on its 7th
    assert stop not in plain[0][:4] + plain[1][:6] and eos not in plain[0][:4] + plain[1][:6]
    greedy = generate(model, prompt, 10, 64, eos_id=eos, stop_ids={stop})
    assert greedy[:, 60:].tolist() == [plain[0][:4] + [eos] * 2, plain[1][:6]]
    for sources in (plain, [[1, 2], [3]]):
        assert torch.equal(generate_speculative(model, prompt, 10, 64, sources, eos_id=eos, stop_ids={stop}),
                           greedy)
    slid = generate(model, prompt, 64, 64)  # max_new_tokens >= context: no cache, sliding window
    assert torch.equal(generate_speculative(model, prompt, 64, 64, [[1, 2], [3]]), slid)


def test_draft_from_realigns_after_an_edit():
    source = [10, 11, 12, 13, 14, 11, 15, 16]
    assert draft_from(source, [], 0, 3) == ([10, 11, 12], 0)
    # the output copied 10 11 12: the draft goes on after them
    assert draft_from(source, [10, 11, 12], 3, 4) == ([13, 14, 11, 15], 3)
    # 11 occurs twice: the occurrence nearest where the output should be wins
    assert draft_from(source, [10, 99, 14, 11], 6, 2) == ([15, 16], 6)
    assert draft_from(source, [10, 11], 2, 2) == ([12, 13], 2)
    # a token the source lacks (a correction) replaced one source token: the next ones follow
    assert draft_from(source, [10, 11, 99], 3, 2) == ([13, 14], 3)
    # the longest matching n-gram decides, not the nearest single token
    assert draft_from([7, 8, 9, 7, 8, 5], [1, 7, 8], 2, 1) == ([9], 2)
    assert draft_from([7, 8, 9, 7, 8, 5], [9, 7, 8], 2, 1) == ([5], 5)
    assert draft_from(source, [16], 8, 3) == ([], 8)
    # after a draft rejected from its first token, only an n-gram realigns: no guess
    assert draft_from(source, [10, 11, 99], 3, 2, guess=False) == ([], 3)
    assert draft_from(source, [10, 99, 14], 3, 2, guess=False) == ([11, 15], 5)


def test_cache_truncate_and_select_match_a_fresh_cache():
    model = lively(LlamaModel, LLAMA_CFG)
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = model.new_cache()
        model(ids[:, :9], cache=cache)
        cache.truncate(6)  # back to 6 positions, then on from there
        again = model(ids[:, 6:], cache=cache)
        fresh = model(ids)[:, 6:]
        torch.testing.assert_close(again, fresh, atol=1e-5, rtol=1e-5)
        assert len(cache) == 12
        cache.select(rows=torch.tensor([2, 0]))
        nxt = model(ids[[2, 0], -1:], cache=cache)
        torch.testing.assert_close(nxt, model(torch.cat([ids[[2, 0]], ids[[2, 0], -1:]], 1))[:, -1:],
                                   atol=1e-5, rtol=1e-5)
        mixed = model.new_cache()
        model(ids, cache=mixed)
        keep = torch.tensor([[0, 1, 2, 5, 8], [3, 4, 9, 10, 11], [0, 2, 4, 6, 8]])
        mixed.select(positions=keep)
        k, v = mixed.layers[1]
        full = model.new_cache()
        model(ids, cache=full)
        for row in range(3):
            assert torch.equal(k[row], full.layers[1][0][row][:, keep[row]])
            assert torch.equal(v[row], full.layers[1][1][row][:, keep[row]])


# --- models trained to copy ---------------------------------------------------------------

SEP, EOS, FIX = 1, 2, {5: 6}  # answer = the input with every 5 "corrected" into a 6


def copy_pairs(generator: torch.Generator, n: int) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for _ in range(n):
        source = torch.randint(3, 32, (int(torch.randint(4, 10, (1,), generator=generator)),),
                               generator=generator).tolist()
        pairs.append((source, [FIX.get(t, t) for t in source]))
    return pairs


def trained_copier(model: torch.nn.Module, steps: int) -> torch.nn.Module:
    """A few hundred steps of `source SEP answer EOS`, loss on the answer only."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = [s + [SEP] + a + [EOS] for s, a in copy_pairs(generator, 32)]
        width = max(map(len, rows))
        ids = torch.tensor([r + [EOS] * (width - len(r)) for r in rows])
        targets = ids[:, 1:].clone()
        for i, r in enumerate(rows):
            targets[i, :r.index(SEP)] = -100
            targets[i, len(r) - 1:] = -100
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def copiers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gpt = GPTModel({**GPT_CFG, "vocab_size": 32, "context_length": 32, "emb_dim": 64})
    llama = LlamaModel({**LLAMA_CFG, "vocab_size": 32, "context_length": 32, "emb_dim": 64, "hidden_dim": 128})
    return {"gpt2": trained_copier(gpt, 400), "llama": trained_copier(llama, 300)}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("batch, use_cache", [(1, True), (8, True), (8, False)])
def test_trained_copiers_accept_most_drafts(copiers, family, batch, use_cache):
    model = copiers[family]
    pairs = copy_pairs(torch.Generator().manual_seed(9), 8)
    greedy_rows, stats = [], DecodingStats()
    for start in range(0, 8, batch):
        chunk = pairs[start:start + batch]
        ids, mask = left_pad([s + [SEP] for s, _ in chunk], EOS)
        greedy = generate(model, ids, 12, 32, eos_id=EOS, attention_mask=mask, use_cache=use_cache)
        fast = generate_speculative(model, ids, 12, 32, [s for s, _ in chunk], eos_id=EOS,
                                    attention_mask=mask, use_cache=use_cache, stats=stats)
        assert torch.equal(fast, greedy)
        greedy_rows += greedy[:, ids.shape[1]:].tolist()
    right = sum(row[:len(answer)] == answer for row, (_, answer) in zip(greedy_rows, pairs, strict=True))
    assert right >= 5, "the copier should have learnt its task"
    assert stats.tokens_per_pass() > 2.5


# --- the corrector and the lean CPU path --------------------------------------------------

def test_corrector_decodes_speculatively_by_default_with_greedy_answers(tokenizer):
    model = lively(GPTModel, {**GPT_CFG, "vocab_size": 50257, "context_length": 128})
    texts = ["Les enfant sont aller a l'école.", "Il fait beau.", "Ces une bonne idée, mais je ne suis pas sur."]
    fast = Corrector(model, tokenizer, device="cpu", prompt_style="short", batch_size=2)
    slow = Corrector(model, tokenizer, device="cpu", prompt_style="short", batch_size=2, decoding="greedy")
    assert fast.decoding == "speculative"
    assert fast.correct_batch(texts) == slow.correct_batch(texts)
    assert len(fast.stats.tokens) == 3 and slow.stats.tokens == []
    with pytest.raises(UserError, match="unknown decoding"):
        Corrector(model, tokenizer, device="cpu", decoding="beam")


def test_precisions_stay_close_to_float32():
    ids = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(3))
    def plain() -> LlamaModel:
        torch.manual_seed(0)
        return LlamaModel(LLAMA_CFG).eval()

    with torch.no_grad():
        reference = plain()(ids)
        for precision in ("bfloat16", "int8"):  # close to float32, not equal
            model = with_precision(plain(), precision)
            error = (model(ids).float() - reference).abs().max()
            assert 0 < error < 0.1 * reference.abs().max()
    # bfloat16 rounds each position alone: speculative decoding still gives greedy's tokens.
    # (int8 scales the activations of a whole pass at once, so no decoding there is exact.)
    model = with_precision(lively(LlamaModel, LLAMA_CFG), "bfloat16")
    greedy = generate(model, ids, 12, 64)
    assert torch.equal(generate_speculative(model, ids, 12, 64, greedy[:, 20:].tolist()), greedy)
    quantized = with_precision(lively(GPTModel, GPT_CFG), "int8")
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())
    with pytest.raises(ValueError, match="unknown precision"):
        with_precision(quantized, "float8")


def test_int8_is_refused_off_the_cpu(tmp_path):
    with pytest.raises(UserError, match="CPU only"):
        Corrector.from_checkpoint(tmp_path, device="cuda", precision="int8")
