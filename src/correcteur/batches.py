"""From instruction entries to training batches: the dataset, the collate function, the order.

`InstructionDataset` and `custom_collate_fn` follow the course ("Build a Large Language Model
(From Scratch)", chapter 7), with two additions: the prompt's tokens are masked from the loss
(the model learns to write the correction, not to reproduce the typos of its input), and
examples keep their prompt length. `batch_order` makes an epoch's batches a pure function of
(seed, epoch), which is what lets a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from correcteur.prompt import build_prompt


class InstructionDataset(Dataset):
    """Instruction entries tokenised once: each item is `(token_ids, prompt_length)`.

    The prompt (up to and including the response header) and the response are encoded
    separately, exactly as the prompt is encoded at inference, so `prompt_length` is where the
    response starts. Rule for over-long examples: an example of more than `max_length` tokens
    (prompt + response; the end-of-text token is added by the collate function) is DROPPED, never
    truncated (a cut response would teach the model to stop mid-sentence); `self.dropped`
    counts them."""

    def __init__(self, data: list[dict], tokenizer, prompt_style: str = "alpaca",
                 max_length: int | None = None, input_prefix: str = ""):
        self.encoded_texts: list[list[int]] = []
        self.prompt_lengths: list[int] = []
        self.dropped = 0
        for entry in data:
            prompt = tokenizer.encode(build_prompt(entry, prompt_style, input_prefix))
            ids = prompt + tokenizer.encode(entry["output"])
            if max_length is not None and len(ids) > max_length:
                self.dropped += 1
                continue
            self.encoded_texts.append(ids)
            self.prompt_lengths.append(len(prompt))

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.encoded_texts[index], self.prompt_lengths[index]

    def __len__(self) -> int:
        return len(self.encoded_texts)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.encoded_texts]


def custom_collate_fn(batch: list, pad_token_id: int = 50256, ignore_index: int = -100,
                      allowed_max_length: int | None = None, device: str | torch.device = "cpu",
                      mask_instruction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack examples into `(inputs, targets)`, both (batch, time), with the course's semantics.

    Each example gets one end-of-text token (`pad_token_id`) and is padded with it to the
    longest example + 1; inputs drop the last position and targets are shifted by one. In the
    targets every padding token after the first one is `ignore_index`, so the model learns to
    emit exactly one end-of-text. With `mask_instruction`, targets that are prompt tokens are
    `ignore_index` too (items are `(token_ids, prompt_length)`; plain token lists, as in the
    course, have no prompt to mask). Sequences are cut to `allowed_max_length` last."""
    items = [item if isinstance(item, tuple) else (item, 0) for item in batch]
    width = max(len(ids) for ids, _ in items) + 1
    padded = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    for row, (ids, _) in enumerate(items):
        padded[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    inputs, targets = padded[:, :-1], padded[:, 1:].clone()

    is_pad = targets == pad_token_id
    targets[is_pad & (is_pad.cumsum(dim=1) > 1)] = ignore_index
    if mask_instruction:
        for row, (_, prompt_length) in enumerate(items):
            targets[row, :max(prompt_length - 1, 0)] = ignore_index

    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs.to(device), targets.to(device)


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int,
                group_by_length: bool = False) -> list[list[int]]:
    """The batches of one epoch as lists of example indices, a pure function of (seed, epoch).

    With `group_by_length`, indices are shuffled, sorted by length inside windows of 50 batches
    and the batches shuffled again: little padding, still a random order. The last batch may be
    smaller: every example is seen every epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if group_by_length:
        window = batch_size * 50
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: -lengths[i])]
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def optimizer_steps(lengths: list[int], batch_size: int, grad_accum_steps: int, seed: int, epoch: int,
                    group_by_length: bool = False) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of `grad_accum_steps` micro-batches (fewer at the end)."""
    batches = batch_order(lengths, batch_size, seed, epoch, group_by_length)
    return [batches[i:i + grad_accum_steps] for i in range(0, len(batches), grad_accum_steps)]


def collate_indices(dataset: InstructionDataset, indices: list[int], pad_token_id: int,
                    mask_instruction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`custom_collate_fn` of the dataset's examples at `indices`."""
    return custom_collate_fn([dataset[i] for i in indices], pad_token_id=pad_token_id,
                             mask_instruction=mask_instruction)
