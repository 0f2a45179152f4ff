"""LoRA: fine-tune a frozen model through small low-rank adapters, for both model families.

Each targeted `nn.Linear` computes `base(x) + (x A^T B^T) * alpha / rank`, where only `A`
(rank × in, random) and `B` (out × rank, zeros) learn. `B = 0` makes a fresh adapter an exact
no-op, so training starts from the pretrained model. The adapters alone are saved (a few MB
instead of hundreds), and `merge_lora` folds them into the weights for inference, which then
costs nothing extra.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from correcteur.errors import UserError

# The attention and MLP projections of each family (module-name suffixes).
LORA_TARGETS = {
    "gpt2": ("W_query", "W_key", "W_value", "out_proj", "ff.layers.0", "ff.layers.2"),
    "llama": ("W_query", "W_key", "W_value", "out_proj", "ff.fc1", "ff.fc2", "ff.fc3"),
}


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update scaled by `alpha / rank`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        A = torch.empty(rank, base.in_features)  # drawn on the CPU, where `generator` lives
        nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)  # as nn.Linear does
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.A = nn.Parameter(A.to(**factory))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (computed in float32)."""
        delta = (self.B.float() @ self.A.float()) * self.scaling
        self.base.weight.add_(delta.to(self.base.weight.dtype))
        return self.base


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, rank: int = 16, alpha: float = 32.0,
               targets: tuple[str, ...] | None = None, dropout: float = 0.0,
               seed: int = 0) -> nn.Module:
    """Freeze every parameter of `model` and wrap its attention and MLP projections (the
    defaults of `LORA_TARGETS` for `model.family`, or module-name suffixes) in `LoRALinear`.

    Works in place and returns the model; `seed` fixes the random initialisation of the `A`s."""
    targets = tuple(targets or LORA_TARGETS[model.family])
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    chosen = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and _matches(name, targets)]
    if not chosen:
        raise ValueError(f"no nn.Linear of the model matches the LoRA targets {targets}")
    for name in chosen:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout, generator))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only (`<layer>.A`, `<layer>.B`), the part of a LoRA model worth saving."""
    return {f"{name}.{part}": getattr(layer, part).detach().clone()
            for name, layer in lora_layers(model).items() for part in ("A", "B")}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapters into a model prepared by `apply_lora` with the same targets and rank."""
    expected = lora_state_dict(model)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            "the saved LoRA adapters do not fit this model (was it trained on another base model, "
            f"rank or target list?): missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}, wrong shape {sorted(wrong)[:3]}")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, value in state.items():
            name, _, part = key.rpartition(".")
            getattr(layers[name], part).copy_(value)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain `nn.Linear`s back, in place.

    The result computes what the adapted model computed, has the state-dict keys of the
    original model, and is trainable throughout again, like any plain model."""
    for name, layer in lora_layers(model).items():
        _replace(model, name, layer.merged())
    return model.requires_grad_(True)


def count_trainable(model: nn.Module) -> int:
    """Number of values the optimizer will update (shared weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
