"""torch.distributed plumbing for `torchrun ... -m kddoctor diagnose`: init, rank, small gathers."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: str) -> str:
    """Initialise the process group when launched by torchrun; returns the device this rank uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_ints(value: int) -> list[int]:
    """Every rank's value, in rank order (a single-element list outside torch.distributed)."""
    return all_gather(value)


def max_int(value: int) -> int:
    """The largest of every rank's value (the value itself outside torch.distributed)."""
    return max(gather_ints(value))


def all_gather(obj: object) -> list:
    """Every rank's object, in rank order (a single-element list outside torch.distributed)."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def merge_reservoirs(kept, attrs: tuple[str, ...] = ("inputs", "outputs")):
    """Bottom-k over every rank's reservoirs `kept.<attr>` (all ranks end with the same subsets)."""
    from ._sampling import Reservoir, merge_results

    for attr in attrs:
        res = getattr(kept, attr)
        keys, cols = res.result()
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (keys.cpu(), {n: v.cpu() for n, v in cols.items()}))
        merged = Reservoir(res.k)
        merged.keys, merged.cols = merge_results(parts, res.k)
        setattr(kept, attr, merged)
    return kept


def gather_columns(samples: dict) -> dict:
    """Concatenate every rank's per-sample columns (rank 0 first, so its feature rows stay aligned)."""
    import numpy as np

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, samples)
    return {k: np.concatenate([p[k] for p in parts]) for k in samples}
