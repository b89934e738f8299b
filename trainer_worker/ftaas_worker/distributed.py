"""What the recipe does differently on each rank of a job trained across several processes.

Every rank plans the same batches; each runs its share of every micro-batch and the loss sums
are reduced across ranks, so every trained token weighs what it does in one process. A base
that fits each device several times over is replicated, and only the LoRA gradients (a few MB)
are averaged once a step; a larger one is sharded with FSDP2 (each decoder layer a unit of its
own, all-gathered just before it runs), which costs a gather of every weight twice a micro-
batch (bench/README.md measures both). The adapter is gathered whole to be saved, and the
optimizer state is saved with ``torch.distributed.checkpoint``, which reshards it for any
number of processes on resume.

With one process (no process group) each function here is what the recipe would do anyway, so
the recipe has one code path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from peft import PeftModel
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from ftaas_core.settings import get_settings

T = TypeVar("T")
ADAPTER_NAME = "default"  # peft's, the one adapter a job trains
FITS_TIMES = 4
"""Under "auto" a base is replicated when the device holds it this many times over: room for
the activations, the adapter's gradients and optimizer state, and the allocator's slack."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's training processes (one machine)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0, the one that reports to the job and writes what only needs writing once."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.rank) if torch.cuda.is_available() else torch.device("cpu")

    @property
    def backend(self) -> str:
        return "nccl" if torch.cuda.is_available() else "gloo"


def current() -> Ranks:
    """The ranks of the process group, or one process without one."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def share(items: Sequence[T], ranks: Ranks) -> tuple[Sequence[T], bool]:
    """This rank's items of a batch (every world-th one) and whether they count.

    A rank left without one runs the batch's first item and counts it at zero weight: FSDP's
    collectives need every rank to run the same forward and backward passes.
    """
    mine = items[ranks.rank :: ranks.world]
    return (mine, True) if mine else (items[:1], False)


def summed(values: Sequence[float], ranks: Ranks) -> list[float]:
    """Each value summed over the ranks (float64, so sums of losses lose nothing)."""
    if ranks.world == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ranks.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def agreed(value: T, ranks: Ranks) -> T:
    """Rank 0's ``value`` on every rank: one decision (a stop request) taken by all at once."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=ranks.device)
    return box[0]


def spread(model: PeftModel, ranks: Ranks) -> str | None:
    """Replicate or shard the model over the ranks (``FTAAS_SHARDING``; "auto" replicates a
    base that fits each device FITS_TIMES over); which, or None in one process."""
    if ranks.world == 1:
        return None
    strategy = get_settings().sharding
    if strategy == "auto":
        held = model.get_base_model().get_memory_footprint()  # weights and buffers
        strategy = "replicate" if FITS_TIMES * held <= _device_memory(ranks) else "fsdp2"
    if strategy == "fsdp2":
        _shard(model, ranks)
    return strategy


def _device_memory(ranks: Ranks) -> int:
    """A GPU's memory, or this machine's share of RAM for each rank."""
    if ranks.device.type == "cuda":
        return torch.cuda.get_device_properties(ranks.device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // ranks.world


def average_gradients(model: PeftModel, ranks: Ranks) -> None:
    """A replicated model's gradients, the mean over the ranks, in one all-reduce (FSDP2
    reduces its own as the backward pass goes)."""
    if ranks.world == 1 or is_sharded(model):
        return
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    flat = torch.cat([grad.flatten() for grad in grads])
    dist.all_reduce(flat)
    flat /= ranks.world
    for grad, mean in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
        grad.copy_(mean.view_as(grad))


def _shard(model: PeftModel, ranks: Ranks) -> None:
    """FSDP2 over the base model (and the LoRA weights inside its layers), in place.

    The root unit is the causal LM itself, not the peft wrapper: its forward is what training,
    evaluation and ``generate`` all call, so its parameters are gathered on every path.
    """
    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    causal_lm = model.get_base_model()
    layers = set(getattr(causal_lm, "_no_split_modules", None) or ())
    for module in causal_lm.modules():
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh)
    fully_shard(causal_lm, mesh=mesh)


def is_sharded(model: PeftModel) -> bool:
    return isinstance(model.get_base_model(), FSDPModule)


def save_adapter(model: PeftModel, directory: Path, ranks: Ranks) -> None:
    """The adapter in PEFT format, gathered whole from the ranks' shards (a collective)."""
    state = {
        name: (p.full_tensor() if isinstance(p, DTensor) else p.detach()).cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    if ranks.main:
        model.save_pretrained(directory, state_dict=state)


def load_adapter_into_shards(model: PeftModel, directory: Path) -> list[str]:
    """Load a saved adapter into a sharded model, each rank keeping its shard; the saved keys
    that fit no trainable weight (peft saves each without the adapter's name)."""
    saved = load_file(directory / "adapter_model.safetensors")
    with torch.no_grad():
        for name, p in model.named_parameters():
            key = name.replace(f".{ADAPTER_NAME}", "")
            if p.requires_grad and key in saved:
                full = saved.pop(key).to(p.device, p.dtype)
                p.copy_(distribute_tensor(full, p.device_mesh, p.placements))
    return sorted(saved)


def save_optimizer(model: PeftModel, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """The optimizer state, each rank writing its shard (a collective; one file with one)."""
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    with _one_process_is_meant():
        dcp.save(state, checkpoint_id=directory, no_dist=not dist.is_initialized())


def load_optimizer(model: PeftModel, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """The optimizer state saved by :func:`save_optimizer`, resharded for these ranks."""
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    with _one_process_is_meant():
        dcp.load(state, checkpoint_id=directory, no_dist=not dist.is_initialized())
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


@contextmanager
def _one_process_is_meant() -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group: we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield
