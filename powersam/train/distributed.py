"""Thin helpers around ``torch.distributed`` for torchrun launches; every one is a no-op in a single process.

Launch: ``torchrun --nproc_per_node=N train.py ...`` (or ``python -m torch.distributed.run``). torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them, picks NCCL on CUDA and gloo
on CPU, and returns a :class:`DistInfo`. Also here: deterministic sharding (:func:`shard_indices`,
:class:`ShardSampler`) and the small batch / loader helpers the trainer uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_dist_info(device: Optional[torch.device] = None) -> DistInfo:
    """The current process' :class:`DistInfo` without initialising anything."""
    if is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    local_rank = _env_int("LOCAL_RANK", 0) if world > 1 else 0
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return DistInfo(rank, world, local_rank, torch.device(device), rank == 0)


def init_distributed(backend: Optional[str] = None, use_cuda: Optional[bool] = None) -> DistInfo:
    """Join the process group described by torchrun's environment; without it (or with one process) do nothing.

    Args:
        backend: ``"nccl"`` / ``"gloo"``; default NCCL when CUDA is used, gloo otherwise.
        use_cuda: run on ``cuda:LOCAL_RANK``; default: when CUDA is available.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("use_cuda=True but CUDA is not available")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"), init_method="env://")
    return DistInfo(rank, world, local_rank, device, rank == 0)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or ``model`` itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def wrap_ddp(model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` in a multi-process job, ``model`` unchanged otherwise.

    The model must already be on its device (``cuda:LOCAL_RANK`` or the CPU).
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def is_main() -> bool:
    return not is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks (a new tensor; ``tensor`` is not modified)."""
    out = tensor.detach().clone()
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out = out / dist.get_world_size() if out.is_floating_point() else out // dist.get_world_size()
    return out


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over all ranks (a new tensor)."""
    out = tensor.detach().clone()
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (pickled transport); ``[obj]`` in a single process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined). The ranks meet first, so that none tears its
    communication down while a peer may still be talking to it (once in CI a gloo rank aborted at the end of the
    DDP test with "terminate called without an active exception")."""
    if is_initialized():
        try:
            barrier()
        finally:
            dist.destroy_process_group()


def shard_indices(n: int, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool = True, drop_last: bool = False) -> list[int]:
    """This rank's sample indices for ``epoch``, the same split as ``torch.utils.data.DistributedSampler``.

    The permutation depends only on ``seed + epoch``. Without ``drop_last`` the list is padded by wrapping
    around so that every rank gets ``ceil(n / world_size)`` samples; with it, the tail that does not divide
    evenly is dropped.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    if drop_last and n % world_size:
        per_rank = max(-(-(n - world_size) // world_size), 0)  # ceil((n - w) / w), as DistributedSampler
    else:
        per_rank = -(-n // world_size)
    total = per_rank * world_size
    if total > n:
        if n == 0:
            return []
        repeats = -(-(total - n) // n)
        order = order + (order * repeats)[: total - n]
    else:
        order = order[:total]
    return order[rank:total:world_size]


class ShardSampler(torch.utils.data.Sampler[int]):
    """A sampler over :func:`shard_indices`; call :meth:`set_epoch` before each epoch (the Trainer does)."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        info = get_dist_info(torch.device("cpu"))
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = info.rank if rank is None else rank
        self.world_size = info.world_size if world_size is None else world_size
        self.epoch = 0
        self._len = len(shard_indices(n, 0, seed, self.rank, self.world_size, False, drop_last))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(shard_indices(self.n, self.epoch, self.seed, self.rank, self.world_size, self.shuffle, self.drop_last))

    def __len__(self) -> int:
        return self._len


def move_to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside (nested dicts / lists / tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the loader and on its (batch) sampler, where they have one."""
    seen = set()
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)
            seen.add(id(obj))
