"""``trainer.strategy=fsdp``: the policy sharded across ranks with PyTorch's FSDP2 (``fully_shard``).

Every rank holds 1/N of each float32 master weight, of its gradient and of Adam's two moments
(DTensors sharded on dim 0); a transformer block's full weights exist only while it runs. What is
built on top of FSDP2, and why:

- **Rank 0's weights**: every tensor is broadcast from rank 0 before sharding (DDP's constructor does
  the same), so each rank keeps its shard of one and the same model.
- **Units**: one per transformer block (``decoder.layers[i]``), then the root: the :class:`Policy`,
  whose own unit holds the embeddings, final norm, output layer and value head (a tied output layer
  must share the embeddings' unit). The frozen KL reference, when there is one, is sharded the same
  way as a separate tree.
- **Precision**: ``MixedPrecisionPolicy(param_dtype=<compute dtype>, reduce_dtype=float32)``: blocks
  are all-gathered in the compute dtype, gradients reduced in float32 into the float32 shards.
  Inputs are not cast (``cast_forward_inputs=False``): the policy's autocast does it, as under DDP.
- **Sum, not mean**: each rank's loss is already weighted by its tokens over the mini-batch's
  (``lrn.update``), so gradients are *summed* over ranks: divide factor 1 with sum-only reductions
  (FSDP2 averages by default; NCCL's pre-multiplied sum does not exist on gloo).
- **Same collectives on every rank**: every forward all-gathers, so each rank runs the same number of
  forward (and backward) passes; ranks with fewer micro-batches run weightless ones (:func:`pad`), and
  a rank with no questions to roll out still calls its engine (``lrn.rollout.ShardedRollouts``).
- **The root after no-grad passes**: FSDP keeps the root unit gathered after a forward, for the
  backward; ``Policy.score`` reshards it (the KL reference never has a backward).
- **Generation** (:func:`full_weights`): Hugging Face ``generate`` runs a different number of forward
  passes on each rank, so the whole model is all-gathered first (in the compute dtype) and resharded
  after; vLLM is given one full tensor at a time (``lrn.engines.vllm.full_state_dict``).
- **State dicts**: PyTorch's ``torch.distributed.checkpoint.state_dict`` keys the model and the
  optimizer state by parameter name, so a checkpoint written by N ranks loads on M (``lrn.checkpoint``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from lrn import distributed
from lrn.validation import ConfigError

T = TypeVar("T")


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` is (the root of) an FSDP2 tree."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor (an all-gather: every rank must call it), any other tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def blocks(policy: nn.Module) -> nn.ModuleList:
    """The transformer blocks of ``policy``'s decoder (``decoder.layers``: Llama, Qwen, Mistral, ...)."""
    layers = getattr(policy.body, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ConfigError(f"trainer.strategy=fsdp: {type(policy.body).__name__} has no `layers` list of "
                          "transformer blocks to shard; use trainer.strategy=ddp for this model")
    return layers


def shard(policy: nn.Module) -> None:
    """Shard ``policy`` (and its frozen reference) in place across the process group's ranks, joining a
    one-process group first if there is none (FSDP needs one; a single process is world size 1).

    Build the optimizer afterwards: sharding replaces every parameter with a DTensor shard.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    units = {id(tree): blocks(tree) for tree in (policy, policy._frozen) if tree is not None}  # refused first
    distributed.init(alone=True)
    for tree in (policy, policy._frozen):  # rank 0's weights, as DDP's constructor does: e.g. LoRA's random
        if tree is not None:  # init may differ across ranks, and a shard of each would mix them
            distributed.broadcast_tensors(tree.state_dict().values())
    precision = MixedPrecisionPolicy(param_dtype=policy.dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for tree in (policy, policy._frozen):
        if tree is None:
            continue
        for block in units[id(tree)]:
            fully_shard(block, mp_policy=precision)
        fully_shard(tree, mp_policy=precision)
        for unit in tree.modules():  # neither setting is recursive
            if isinstance(unit, FSDPModule):
                unit.set_gradient_divide_factor(1.0)
                unit.set_force_sum_reduction_for_comms(True)
        # the root is whichever unit runs forward first; generation may call a block before the policy does
        tree._get_fsdp_state()._lazy_init()


def pad(items: list[T], filler: T) -> list[T]:
    """``items`` extended with ``filler`` to the longest list over ranks: every rank then runs as many
    forward passes (each all-gathers its blocks)."""
    return items + [filler] * (distributed.max_int(len(items)) - len(items))


@contextlib.contextmanager
def full_weights(policy: nn.Module) -> Iterator[None]:
    """All of ``policy``'s weights unsharded (in the compute dtype) for the duration: forward passes then
    run no collective, so each rank may run as many as it needs (``generate``). Resharded after."""
    units = [m for m in policy.modules() if is_sharded(m)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            if unit is not policy:  # the root keeps its own setting (not resharded after forward)
                unit.set_reshard_after_forward(True, recurse=False)


@contextlib.contextmanager
def generating(policy: nn.Module) -> Iterator[None]:
    """What Hugging Face generation on a sharded policy runs in: its whole weights, its autocast."""
    with full_weights(policy), policy.autocast():
        yield


def full_state_dict(module: nn.Module, rank0_only: bool = True) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every tensor whole, on the CPU, one tensor gathered at a time; with
    ``rank0_only`` the other ranks take part in the gathers and return an empty dict."""
    from torch.distributed.tensor import DTensor

    keep = distributed.is_main() or not rank0_only
    out: dict[str, torch.Tensor] = {}
    # a tied weight (output layer = embeddings) is gathered once and stays one tensor under both names,
    # which save_pretrained then saves once, as it does for the unsharded model
    gathered: dict[tuple, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        key = (local.data_ptr(), tensor.shape, tensor.dtype)
        if key not in gathered:
            whole = full(tensor).detach()
            gathered[key] = whole.cpu() if keep else whole[:0]
        if keep:
            out[name] = gathered[key]
    return out


# -- checkpoints -------------------------------------------------------------------------------------

def save_state(policy: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Write the policy's and the optimizer's shards with ``torch.distributed.checkpoint`` (every rank
    writes its own file into ``directory``, which must be on a filesystem all ranks share)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(policy, optimizer)
    try:
        dcp.save({"model": model, "optimizer": optim}, checkpoint_id=directory)
    except CheckpointException as e:  # DCP gathers every rank's (exception, traceback): raise the first, e.g.
        failures = [error for error, _ in e.failures.values()]  # a full disk's OSError, reported in one line
        raise (failures[0] if failures else e) from None


def load_state(policy: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Load :func:`save_state`'s files into ``policy`` and ``optimizer``, however many ranks wrote them and
    however many read them (sharded or not: DCP reshards to the layout asked for)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, optim = get_state_dict(policy, optimizer)
    state = {"model": model, "optimizer": optim}
    alone = not torch.distributed.is_initialized()  # trainer.strategy=ddp in one process: no group to coordinate
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)  # DCP says so even when told
        dcp.load(state, checkpoint_id=directory, no_dist=alone)
    set_state_dict(policy, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_full_state(policy: nn.Module, optimizer: torch.optim.Optimizer, model: dict[str, torch.Tensor],
                    optim: dict) -> None:
    """Load a replicated checkpoint's whole tensors (``policy.state_dict()`` names; an optimizer state
    dict keyed by parameter index, as ``optimizer.state_dict()`` gives) into a sharded policy."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = {id(p): n for n, p in policy.named_parameters()}
    index = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {"state": {index[i]: s for i, s in optim["state"].items()},
               "param_groups": [{**g, "params": [index[i] for i in g["params"]]} for g in optim["param_groups"]]}
    set_state_dict(policy, optimizer, model_state_dict=model, optim_state_dict=by_name,
                   options=StateDictOptions(full_state_dict=True))
