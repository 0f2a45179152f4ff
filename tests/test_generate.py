"""Generation: the KV cache, left-padded batches and per-row stopping change nothing but speed."""

from __future__ import annotations

import pytest
import torch

from correcteur.generate import generate, left_pad

PROMPTS = ["Il faut que tu viennes.", "Ces une bonne idée, mais je ne suis pas sur.", "Bonjour"]


@pytest.fixture
def lively_gpt(tiny_gpt):
    """The tiny GPT with large random weights: freshly initialised, it repeats one token, which
    would make batched and single outputs agree by accident."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in tiny_gpt.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return tiny_gpt


def one_by_one(model, prompts: list[list[int]], n: int, eos_id: int | None = None) -> list[list[int]]:
    return [generate(model, torch.tensor([p]), n, 128, eos_id=eos_id, use_cache=False)[0, len(p):].tolist()
            for p in prompts]


def test_cache_gives_the_same_tokens(lively_gpt, tokenizer):
    prompt = torch.tensor([tokenizer.encode(PROMPTS[1])])
    with_cache = generate(lively_gpt, prompt, 25, 128, use_cache=True)
    assert torch.equal(with_cache, generate(lively_gpt, prompt, 25, 128, use_cache=False))
    sampled = [generate(lively_gpt, prompt, 25, 128, temperature=1.0, top_k=50, use_cache=cache,
                        generator=torch.Generator().manual_seed(7)) for cache in (True, False)]
    assert torch.equal(*sampled)


def test_cache_logits_match_a_full_forward(lively_gpt, tokenizer):
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    cache = lively_gpt.new_cache()
    with torch.no_grad():
        stepwise = torch.cat([lively_gpt(ids[:, :5], cache=cache)]
                             + [lively_gpt(ids[:, i:i + 1], cache=cache) for i in range(5, ids.shape[1])], dim=1)
        torch.testing.assert_close(stepwise, lively_gpt(ids), atol=1e-4, rtol=1e-5)


def test_left_padded_batch_equals_one_by_one(lively_gpt, tokenizer):
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    ids, mask = left_pad(prompts, tokenizer.eot_token)
    batched = generate(lively_gpt, ids, 15, 128, attention_mask=mask)
    assert batched[:, ids.shape[1]:].tolist() == one_by_one(lively_gpt, prompts, 15)


def test_rows_stop_at_their_own_end_of_text(lively_gpt, tokenizer):
    """Declare as end-of-text the 4th token the first prompt produces: that row must stop
    there and be filled, the other rows must go on as if alone."""
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    alone = one_by_one(lively_gpt, prompts, 15)
    eos = alone[0][3]
    expected = []
    for tokens in alone:
        stop = tokens.index(eos) if eos in tokens else len(tokens)
        expected.append(tokens[:stop] + [eos] * (len(tokens) - stop))
    assert [e for e in expected if eos not in e], "some row should run to the end"

    ids, mask = left_pad(prompts, tokenizer.eot_token)
    batched = generate(lively_gpt, ids, 15, 128, eos_id=eos, attention_mask=mask)
    assert batched[:, ids.shape[1]:].tolist() == expected
    # Alone, a row ends without appending the end-of-text token (the course's behaviour).
    assert one_by_one(lively_gpt, prompts[:1], 15, eos_id=eos) == [alone[0][:3]]


def test_any_stop_id_ends_a_row_like_end_of_text(lively_gpt, tokenizer):
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    alone = one_by_one(lively_gpt, prompts, 15)
    other = alone[0][3]  # the 4th token of the first row plays <|im_end|>
    ids, mask = left_pad(prompts, tokenizer.eot_token)
    with_stop = generate(lively_gpt, ids, 15, 128, eos_id=tokenizer.eot_token, attention_mask=mask,
                         stop_ids={other})[:, ids.shape[1]:].tolist()
    as_eos = generate(lively_gpt, ids, 15, 128, eos_id=other, attention_mask=mask)[:, ids.shape[1]:].tolist()
    eot = tokenizer.eot_token
    assert [[eot if t == other else t for t in row] for row in as_eos] == with_stop
    assert with_stop[0] == alone[0][:3] + [eot] * 12


def test_long_prompt_is_returned_whole_as_in_the_course(lively_gpt):
    prompt = torch.randint(0, 50257, (1, 120), generator=torch.Generator().manual_seed(3))
    out = generate(lively_gpt, prompt, 20, 128)
    assert out.shape == (1, 140) and torch.equal(out[:, :120], prompt)


def test_cache_gives_the_same_tokens_for_a_long_prompt(lively_gpt):
    prompt = torch.randint(0, 50257, (1, 120), generator=torch.Generator().manual_seed(3))
    cached, uncached = (generate(lively_gpt, prompt, 20, 128, use_cache=c)[:, -20:] for c in (True, False))
    assert torch.equal(cached, uncached)
