"""Lean CPU inference: the same model in bfloat16, or with its Linear layers in dynamic int8.

Measured on the CPU corrector (benchmarks/RESULTS.md, "CPU precision"): both are faster than
float32, but dynamic int8 (activations quantized per tensor, as `torch.ao` does) loses SmolLM2
to its activation outliers, and bfloat16 changes some answers; float32 stays the default.
Dynamic int8 also scales the activations of a whole forward pass at once, so a token's logits
depend on what else the pass holds: neither batches nor speculative decoding are then exactly
what one-token-at-a-time greedy decoding gives.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

PRECISIONS = ("float32", "bfloat16", "int8")


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """`model` for inference in `precision` (in place for float32 and bfloat16; int8 swaps every
    nn.Linear, the output head included, for a dynamically quantized one: CPU only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return model.float()
    if precision == "bfloat16":
        return model.to(torch.bfloat16)
    with warnings.catch_warnings():  # torch.ao announces its successor; the call is what we measure
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.float().cpu(), {nn.Linear}, dtype=torch.qint8)
