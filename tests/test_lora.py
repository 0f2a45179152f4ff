"""LoRA on both families: a no-op when fresh, only adapters learn, merging changes nothing,
adapters save and load on their own."""

import io

import pytest
import torch
import torch.nn as nn

from correcteur.errors import UserError
from correcteur.llama import LlamaModel
from correcteur.lora import (
    LoRALinear,
    apply_lora,
    count_trainable,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)
from correcteur.model import GPTModel

FAMILIES = ["gpt2", "llama"]


def tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    common = {"vocab_size": 61, "context_length": 32, "emb_dim": 32, "n_heads": 4, "n_layers": 2}
    if family == "gpt2":
        return GPTModel({**common, "drop_rate": 0.0, "qkv_bias": True})
    return LlamaModel({**common, "n_kv_groups": 2, "hidden_dim": 48, "rope_base": 10000.0,
                       "rms_norm_eps": 1e-5, "tie_embeddings": True})


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 61, (4, 17), generator=torch.Generator().manual_seed(1))
    return ids[:, :-1], ids[:, 1:]


def loss_of(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())


def train(model: nn.Module, steps: int = 8) -> list[float]:
    inputs, targets = batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = loss_of(model, inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_adapters_change_nothing_and_only_they_train(family):
    model = tiny(family)
    inputs, _ = batch()
    with torch.no_grad():
        before = model(inputs)
    apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(model(inputs), before)

    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 2 * (6 if family == "gpt2" else 7)  # per block: attention + MLP projections
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)
    expected = sum(4 * (m.base.in_features + m.base.out_features) for m in layers)
    assert count_trainable(model) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_training_moves_only_adapters_and_merging_keeps_the_function(family):
    model = tiny(family)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8)
    losses = train(model)
    assert losses[-1] < losses[0] - 0.1

    adapted_base = {k.replace(".base.", "."): v for k, v in model.state_dict().items()
                    if not k.endswith((".A", ".B"))}
    assert adapted_base.keys() == base_state.keys()
    assert all(torch.equal(adapted_base[k], base_state[k]) for k in base_state)

    inputs, _ = batch()
    model.eval()
    with torch.no_grad():
        adapted = model(inputs)
        merge_lora(model)
        merged = model(inputs)
    assert (merged - adapted).abs().max() < 1e-5
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.state_dict().keys() == base_state.keys()
    assert count_trainable(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_save_and_load_on_their_own(family):
    trained = apply_lora(tiny(family), rank=4, alpha=8)
    train(trained, steps=3)
    buffer = io.BytesIO()
    torch.save(lora_state_dict(trained), buffer)
    adapters = sum(v.numel() for v in lora_state_dict(trained).values())
    assert adapters == count_trainable(trained)

    fresh = apply_lora(tiny(family), rank=4, alpha=8, seed=1)  # same base, other random A
    buffer.seek(0)
    load_lora_state_dict(fresh, torch.load(buffer))
    inputs, _ = batch()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(inputs), trained.eval()(inputs))


def test_adapters_of_another_shape_are_refused():
    saved = lora_state_dict(apply_lora(tiny("llama"), rank=4, alpha=8))
    with pytest.raises(UserError, match="wrong shape"):
        load_lora_state_dict(apply_lora(tiny("llama"), rank=8, alpha=8), saved)
    with pytest.raises(UserError, match="missing"):
        load_lora_state_dict(apply_lora(tiny("gpt2"), rank=4, alpha=8), saved)


def test_scaling_and_dropout():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 5), rank=2, alpha=6, dropout=0.5)
    with torch.no_grad():
        layer.B.fill_(1.0)
    x = torch.randn(3, 8)
    expected = layer.base(x) + 3.0 * (x @ layer.A.T @ layer.B.T)
    assert torch.allclose(layer.eval()(x), expected, atol=1e-6)
    assert not torch.allclose(layer.train()(x), expected, atol=1e-3)  # dropout acts in training
    with pytest.raises(ValueError):
        LoRALinear(nn.Linear(8, 5), rank=0, alpha=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_on_response_logits_only_equals_the_course_loss(family):
    """calc_loss_batch runs the output head on counted targets only: same loss, same gradients."""
    from correcteur.train import calc_loss_batch

    inputs, targets = batch()
    targets = targets.clone()
    targets[:, :9] = -100  # the prompt
    targets[1, 12:] = -100  # padding
    losses, grads = [], []
    for compute in (lambda m: calc_loss_batch(inputs, targets, m, "cpu"),
                    lambda m: nn.functional.cross_entropy(m(inputs).flatten(0, 1), targets.flatten())):
        model = tiny(family)
        loss = compute(model)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    chosen = tiny(family)(inputs, logits_at=targets != -100)
    assert chosen.shape == ((targets != -100).sum().item(), 61)
    with pytest.raises(ValueError, match="not both"):
        tiny(family)(inputs, only_last=True, logits_at=targets != -100)

    class CourseModel(nn.Module):  # a learner's own model: forward(idx) only
        def __init__(self):
            super().__init__()
            self.inner = tiny(family)

        def forward(self, idx):
            return self.inner(idx)

    assert calc_loss_batch(inputs, targets, CourseModel(), "cpu").item() == pytest.approx(losses[1], abs=1e-6)
