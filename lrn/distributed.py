"""One experiment across N processes (``torchrun`` / ``accelerate launch``): a thin layer over torch.distributed.

The launcher sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`init` joins the process group (NCCL with
one GPU per rank on CUDA, gloo on CPU). Without a launcher there is no process group and every
function here is the identity, so a single process runs exactly the code and numbers it always did.

What is shared and how (docs/distributed.md): every rank holds all of a step's rollouts (they are
all-gathered), makes the same choices from the same RNG streams, scores its share of them, updates on
its share of each mini-batch inside torch's DistributedDataParallel and sums the token-weighted
gradients, so the update equals the single-process one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process, even as its only process."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def init(alone: bool = False) -> None:
    """Join the process group of a launch (once), and make one collective call so that the backend's
    communicators exist (NCCL creates them lazily); a no-op without a launcher, unless ``alone``: then
    the process joins a group of its own (FSDP shards over a process group, even of one). A launch of
    one process joins a group of one: every function here then acts as for a single process."""
    if dist.is_initialized() or not (launched() or alone):
        return
    # torch.distributed.nn binds ``group.WORLD`` as default arguments when it is first imported (the
    # trainer's imports reach it: transformers -> torch.distributed.fsdp). Imported after the group
    # exists, those defaults keep the group alive past destroy_process_group, so gloo's worker threads
    # outlive the interpreter and can abort the rank at exit (SIGABRT). Imported now, they bind None.
    import torch.distributed.nn  # noqa: F401

    kwargs: dict = {}
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
    if not launched():  # alone: an in-memory store, no port, no launcher variables needed
        kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", **kwargs)
    dist.barrier()


def backend() -> str:
    """The process group's backend (nccl, gloo), or ``none`` without a launcher."""
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files, logs and prints."""
    return rank() == 0


def shard(items: Sequence[T], r: int | None = None, n: int | None = None) -> Sequence[T]:
    """Rank ``r``'s contiguous share of ``items`` (sizes differ by at most one; earlier ranks get more).

    >>> [list(shard(range(5), r, 2)) for r in range(2)]
    [[0, 1, 2], [3, 4]]
    """
    r, n = rank() if r is None else r, world() if n is None else n
    base, extra = divmod(len(items), n)
    start = r * base + min(r, extra)
    return items[start:start + base + (r < extra)]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` for a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def gather_shards(items: list[T]) -> list[T]:
    """Concatenate every rank's list in rank order: the inverse of :func:`shard`."""
    if not active():
        return items
    return [x for part in all_gather_object(items) for x in part]


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors) -> None:
    """Overwrite each tensor in place with rank 0's (nothing for a single process)."""
    if not active():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=0)


def sum_values(values: dict[str, float]) -> dict[str, float]:
    """Key-wise sums over ranks (a key a rank lacks counts as 0); the dict itself for a single process."""
    if not active():
        return values
    total: dict[str, float] = {}
    for part in all_gather_object(values):
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


def max_int(value: int) -> int:
    """The largest ``value`` over ranks (e.g. a signal any rank received)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over ranks (``t`` itself for a single process)."""
    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _sum_hook(state, bucket):  # unannotated: DDP checks the annotations, which are strings here
    """DDP communication hook: SUM the bucket's gradients (DDP's default averages). Each rank's loss is
    already weighted by its tokens over the mini-batch's global tokens, so the sum is the single-process
    gradient."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` inside torch's DistributedDataParallel under several processes (built once, kept on the
    module), itself otherwise. Gradients are summed across ranks in buckets during the backward pass.
    A module sharded with FSDP (``trainer.strategy=fsdp``) is returned as it is: it syncs by itself."""
    from torch.distributed.fsdp import FSDPModule

    if not active() or isinstance(module, FSDPModule):
        return module
    wrapped = module.__dict__.get("_data_parallel")
    if wrapped is None:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.cuda.current_device()] if dist.get_backend() == "nccl" else None
        wrapped = DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)
        wrapped.register_comm_hook(None, _sum_hook)
        object.__setattr__(module, "_data_parallel", wrapped)  # not a submodule: no cycle in the module tree
    return wrapped


def no_sync(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (accumulate gradients locally, sync on a later backward); nothing otherwise."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), then the others do."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
