"""Data-parallel training over several processes: the little of torch.distributed `train` needs.

`torchrun --nproc_per_node=N -m correcteur train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. `session()` reads them, joins the process group
(nccl on CUDA, gloo on the CPU) and hands the loop a `Ranks`: which rank this is, which examples
of a global batch it computes, and the few collectives the loop needs. Without those variables
it is one rank whose collectives return their input, so one process runs the same loop.

How the work is shared: the loop builds every epoch's batches with the *global* batch size
(`--batch-size` x ranks), as one process with that batch size would, and each rank takes every
N-th example of each micro-batch (`shard`). A rank's mean loss is weighted by its share of the
micro-batch's response tokens counted over all ranks (`token_weights`), so that the gradient
DistributedDataParallel averages is one process's mean over the whole micro-batch.

Every collective waits at most `CORRECTEUR_DIST_TIMEOUT` seconds (default 900: rank 0 may be
writing a large checkpoint meanwhile), so a rank that died or hangs ends the others with an
error instead of a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from correcteur.errors import UserError

TIMEOUT_ENV = "CORRECTEUR_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 900
# The loop's stop reasons (`train.should_stop`), numbered so that one all-reduce carries them.
REASONS = (None, "early_stopping", "completed", "budget", "interrupted")
# Words of the errors a collective raises when another rank died, hung or cannot be reached
# (gloo raises a plain RuntimeError: "... Connection closed by peer ...").
PEER_ERROR_WORDS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "processgroup")


class DataParallel(DistributedDataParallel):
    """DDP that still tells what the model under it supports (`train.calc_loss_batch` asks)."""

    @property
    def supports_logits_at(self) -> bool:
        return getattr(self.module, "supports_logits_at", False)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes, and their collectives."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and plots."""
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's examples of a global batch: every world_size-th one from its rank on
        (empty when the batch has fewer examples than there are ranks)."""
        return indices[self.rank::self.world_size]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the training steps call: DDP's wrapper over several ranks, else itself."""
        if not self.active:
            return model
        return DataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def no_sync(self, model: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        """Accumulate gradients locally (`skip`: not the step's last micro-batch) instead of
        averaging them over the ranks after every backward pass."""
        return model.no_sync() if self.active and skip else contextlib.nullcontext()

    def all_sum(self, values: list[float]) -> list[float]:
        """The element-wise sum of `values` over the ranks (one collective for the whole list)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def token_weights(self, targets: list[torch.Tensor], owned: list[bool]) -> list[float]:
        """The factor of each micro-batch's mean loss on this rank: ranks x its response
        tokens / the micro-batch's response tokens over all ranks (DDP then averages over
        the ranks: the result is the mean over the whole micro-batch). 0 for a micro-batch this
        rank computes only to take part in DDP's exchange (`owned` False). Exactly 1.0 on one rank."""
        counts = [float((t != -100).sum()) if own else 0.0 for t, own in zip(targets, owned, strict=True)]
        totals = self.all_sum(counts)
        return [self.world_size * count / total if count else 0.0 for count, total in zip(counts, totals, strict=True)]

    def agree(self, reason: str | None) -> str | None:
        """The stop decision every rank follows: rank 0's (budgets are timed there), or
        "interrupted" as soon as any rank was asked to stop."""
        if not self.active:
            return reason
        interrupted = float(reason == "interrupted")
        code = float(REASONS.index(reason)) if self.is_main else 0.0
        tensor = torch.tensor([interrupted, code], device=self._comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return "interrupted" if tensor[0].item() else REASONS[int(tensor[1].item())]

    def barrier(self) -> None:
        """Wait for every rank (e.g. for rank 0's files before the others read them)."""
        if self.active:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


ONE_RANK = Ranks()


def peer_failure(error: BaseException) -> str | None:
    """What went wrong in one line, when `error` says another rank stopped or cannot be reached;
    None for any other error (a user's mistake, a bug, CUDA out of memory)."""
    if isinstance(error, UserError | torch.cuda.OutOfMemoryError):
        return None
    text = str(error).strip()
    if not (isinstance(error, dist.DistError) or any(word in text.lower() for word in PEER_ERROR_WORDS)):
        return None
    line = re.sub(r"^\[[^\]]*\]\s*", "", (text.splitlines() or [type(error).__name__])[0])  # gloo's source line
    return line[:200]


def launched() -> bool:
    """True in a process started by torchrun (or anything setting its variables) for several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Ranks]:
    """The ranks of this training run, the process group joined for its duration when several.

    On CUDA each rank takes the GPU of its LOCAL_RANK. Ranks other than 0 print nothing on
    standard output (their progress is rank 0's); errors still reach standard error."""
    if not launched():
        yield Ranks(device=device)
        return
    if dist.is_initialized():
        raise RuntimeError("a process group is already set up: train() joins and leaves its own")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"data-parallel training (torchrun) runs on CUDA GPUs or CPUs, not {device.type}: "
                        "pass --device cuda or --device cpu, or train in one process without torchrun")
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                            rank=rank, world_size=world_size)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull if rank else sys.stdout):
            yield Ranks(rank, world_size, device)
    finally:
        dist.destroy_process_group()
