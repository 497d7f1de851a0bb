"""Training on several processes (``torchrun``): who this process is, its device, its process group, and the few
collectives ``fit`` needs. Without torchrun there is one process, rank 0, and every function here is a no-op.

``fit`` (``train.py``) trains one model on N processes with ``DistributedDataParallel``: each process its shard of
the batches (``data.Batches`` with ``rank`` and ``world_size``), gradients averaged by DDP, loss parts averaged over
the processes, and only rank 0 shows progress and writes the checkpoint.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    """The processes of a ``torchrun`` launch, read from its environment: one process, rank 0, without torchrun."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @classmethod
    def from_environment(cls) -> "World":
        """torchrun's RANK, LOCAL_RANK and WORLD_SIZE."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))

    def device(self, device: torch.device) -> torch.device:
        """Where this process trains, given the one asked for: under torchrun each process on its own GPU."""
        if self.size == 1:
            return device
        if device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        if device.type != "cpu":
            raise ValueError(f"torchrun with {self.size} processes trains on cuda or cpu, not {device.type}")
        return device


@contextmanager
def process_group(world: World, device: torch.device):
    """With several torchrun processes, their process group (nccl on CUDA, gloo on the CPU), destroyed at the
    end, also on an error. Without torchrun (one process) there is none."""
    if world.size == 1:
        yield
        return
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=world.rank, world_size=world.size, **({"device_id": device} if cuda else {})
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def world_size() -> int:
    """Processes of the initialised process group (``torchrun``, ``python -m cvaelib train``), else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if world_size() > 1 else 0


def _comm_device(device: torch.device) -> torch.device:
    """Where the small tensors of the collectives live: the GPU for nccl, the CPU for gloo."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def rank_seed(seed: int, epoch: int, process: int) -> int:
    """A torch seed of its own for each (seed, epoch, process): distributed ranks draw different noise."""
    return int(np.random.SeedSequence([seed, epoch, process]).generate_state(1)[0])


def rank0_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process (``max_minutes``: all processes stop at the same step)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=_comm_device(device))  # (1,)
    dist.broadcast(t, src=0)
    return bool(t.item())


def first_on_any(index: int, device: torch.device) -> int:
    """The smallest ``index`` over the processes (the first bad step any of them saw)."""
    if world_size() == 1:
        return index
    t = torch.tensor([index], device=_comm_device(device))  # (1,)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def summed(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` summed over the processes, on the CPU."""
    if world_size() == 1:
        return t
    t = t.to(_comm_device(device))
    dist.all_reduce(t)
    return t.cpu()


class _DistributedForward:
    """The model as ``loss_fn`` sees it under DDP: a call runs DDP's forward, attributes are the model's.

    ``RemedyLoss`` and ``losses.elbo`` call ``model(x, y)`` (DDP's forward, whose backward averages the
    gradients over the processes) and read ``model.likelihood``, ``model.num_classes`` and
    ``model.training``, which DDP itself does not expose (it has ``.module``). A ``loss_fn`` under
    DDP must run the model through this call, once per step, not through its other methods.
    """

    def __init__(self, ddp: nn.Module, model: nn.Module):
        self._ddp, self._model = ddp, model

    def __call__(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def runnable(model: nn.Module, device: torch.device, compile: bool = False):
    """The model as ``loss_fn`` calls it: under DDP, a module whose call is DDP's forward (which averages
    the gradients over the processes in backward); compiled with ``compile``."""
    run = model
    if world_size() > 1:  # broadcasts rank 0's parameters
        run = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" and device.index is not None else None
        )
    # A compiled module shares its parameters with ``model`` and passes attributes through.
    run = torch.compile(run) if compile else run
    return _DistributedForward(run, model) if world_size() > 1 else run
