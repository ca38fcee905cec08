"""Checkpoints: everything a run needs to continue exactly where it stopped.

``<run_dir>/checkpoints/step_<N>/`` holds

- ``model/``: the policy (``save_pretrained``: safetensors weights, config, tokenizer), loadable
  with ``from_pretrained`` or ``lrn eval``;
- ``value_head.safetensors``: the GAE value head, when there is one;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's and LR schedule's state dicts
  (tensors in the first file, the structure around them in the second);
- ``state.safetensors`` + ``state.json``: step, cumulative totals, evaluation history, elapsed
  seconds, W&B run id, sampler state and every RNG state (Python, NumPy, torch CPU and CUDA);
- ``manifest.json``, written last: every file above with its size and SHA-256.

A checkpoint is written into a temporary directory and renamed into place, so a kill at any moment
leaves the earlier checkpoints intact; a failed write (disk full, read-only) removes the temporary
directory and raises :class:`lrn.storage.WriteError`. Reading checks every file against the
manifest first, so a file changed after it was written (flipped bytes of the same size included) is
found before a single weight is loaded.

That is the *replicated* layout (``trainer.strategy=ddp``: rank 0 holds everything and writes it).
Under ``trainer.strategy=fsdp`` no rank holds the whole model, so the checkpoint is *sharded*:

- ``sharded/``: the policy's weights (value head included) and Adam's state, written with
  ``torch.distributed.checkpoint`` by every rank at once (one ``__<rank>_0.distcp`` file each, plus
  ``.metadata``), keyed by parameter name, so that it loads on any number of processes, sharded or not;
- ``state.safetensors`` + ``state.json``: as above, with the LR schedule's state added (rank 0's);
- ``manifest.json`` with ``"layout": "sharded"``: every file of every rank with its size and SHA-256
  (each rank hashes its own).

The manifest says which layout a checkpoint has (no ``layout``: replicated, as every checkpoint
written before the sharded one existed), and :func:`apply_checkpoint` loads either into either kind
of policy. A sharded checkpoint needs a directory every rank can write. Only safe loaders are used:
safetensors, JSON, and DCP's own reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lrn import distributed, sharding
from lrn.storage import WriteError, writing

log = logging.getLogger(__name__)
FORMAT = 2  # 2: sizes and SHA-256 of every file; 1 (read still): sizes only
REPLICATED, SHARDED = "replicated", "sharded"  # manifest "layout" (none: replicated)
STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(Exception):
    """A checkpoint that cannot be written, read or applied; one line naming the file."""


@dataclass
class TrainState:
    """What the loop carries from step to step besides model, optimizer and sampler."""

    step: int = 0
    totals: dict[str, int] = field(
        default_factory=lambda: {"counts/rollouts_total": 0, "counts/tokens_generated_total": 0})
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out accuracy)
    elapsed_s: float = 0.0
    # seconds spent evaluating and writing checkpoints so far (time/train_s leaves them out); checkpoints
    # written before these existed load as 0: their earlier evaluations then count as training time
    eval_s: float = 0.0
    checkpoint_s: float = 0.0
    wandb_id: str | None = None


# -- JSON + safetensors trees ------------------------------------------------------------------------

def encode(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of ``obj``; tensors go into ``tensors`` and leave a reference behind.

    Tuples, non-string dict keys and NumPy arrays are tagged so that :func:`decode` restores the
    exact types (``random.getstate()``, ``np.random.get_state()``, optimizer state keys).
    """
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path or 'top level'}")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: decode(v, tensors) for k, v in obj["__items__"]}
    return {k: decode(v, tensors) for k, v in obj.items()}


def write_tree(directory: Path, name: str, tree: Any) -> None:
    """``<name>.safetensors`` (the tensors) and ``<name>.json`` (everything else)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = encode(tree, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(structure))


def read_tree(directory: Path, name: str) -> Any:
    tensors = _read(directory / f"{name}.safetensors", lambda p: load_file(str(p)))
    return decode(_read(directory / f"{name}.json", lambda p: json.loads(p.read_text())), tensors)


def _read(path: Path, loader) -> Any:
    try:
        return loader(path)
    except Exception as e:  # noqa: BLE001 - any parse error means the file is damaged
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {first})") from None


# -- RNG ---------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every global RNG the loop draws from."""
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            log.warning("checkpoint has %d CUDA RNG states, this machine %d GPUs: CUDA sampling will differ "
                        "from an uninterrupted run", len(state["cuda"]), torch.cuda.device_count())
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


# -- the checkpoint directory ------------------------------------------------------------------------

def list_checkpoints(root: Path) -> list[Path]:
    """``step_<N>`` directories under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checkpoint(root: Path, step: int, policy, tokenizer, optimizer, scheduler, sampler, state: TrainState,
                     keep: int) -> Path:
    """Write ``root/step_<step>`` atomically, then delete all but the newest ``keep`` checkpoints.

    A replicated policy's checkpoint is written by rank 0 alone (the only caller); a sharded policy's
    by every rank together (every rank calls this), rank 0 writing all but the shards.
    A failed write raises :class:`lrn.storage.WriteError` and leaves no ``step_<step>`` behind."""
    sharded = sharding.is_sharded(policy)
    main = distributed.is_main()
    final = root / f"step_{step}"
    with writing("checkpoint", final):
        tmp = failed = None
        if main:
            try:
                root.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step}-", dir=root))
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
                failed = e
        if sharded:  # every rank writes into rank 0's temporary directory
            tmp = distributed.broadcast_object(tmp)
        if failed is not None:
            raise failed
        if tmp is None:
            raise WriteError("checkpoint", final, "rank 0 could not create its temporary directory")
        try:
            if main:
                tmp.chmod(0o755)  # mkdtemp makes it private
            if sharded:
                sharding.save_state(policy, optimizer, tmp / "sharded")  # every rank its own shards
                mine = [p for p in (tmp / "sharded").iterdir() if p.name.startswith(f"__{distributed.rank()}_")]
                if main:
                    mine.append(tmp / "sharded" / ".metadata")
                hashed = {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)} for p in mine}
                for p in mine:
                    _fsync(p)
                hashed = {k: v for part in distributed.all_gather_object(hashed) for k, v in part.items()}
                if not main:
                    return final
                trees = {"state": {"scheduler": scheduler.state_dict()}}
            else:
                policy.lm.save_pretrained(tmp / "model")
                tokenizer.save_pretrained(tmp / "model")
                if policy.value_head is not None:
                    save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
                              str(tmp / "value_head.safetensors"))
                hashed = {}
                trees = {"optimizer": {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                         "state": {}}
            trees["state"].update(trainer=dataclasses.asdict(state), sampler=sampler.state_dict(), rng=rng_state())
            for name, tree in trees.items():
                write_tree(tmp, name, tree)
            files = {}
            for p in sorted(tmp.rglob("*")):
                if p.is_file():
                    rel = p.relative_to(tmp).as_posix()
                    files[rel] = hashed.get(rel) or {"size": p.stat().st_size, "sha256": sha256(p)}
            manifest = {"format": FORMAT, "layout": SHARDED if sharded else REPLICATED, "step": step, "files": files}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            for p in tmp.rglob("*"):
                if p.is_file() and p.relative_to(tmp).as_posix() not in hashed:  # the shards: by their writers
                    _fsync(p)
            if final.exists():  # e.g. a damaged checkpoint of this step, left behind by an earlier attempt
                final.rename(root / f".old-{final.name}-{os.getpid()}")
            os.replace(tmp, final)
            _fsync(root)
        except BaseException:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftovers of interrupted writes."""
    for path in list_checkpoints(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-step_*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".old-step_*"):
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Checkpoint:
    """A checkpoint read fully into memory (CPU) and checked, ready to apply."""

    path: Path
    state: TrainState
    model: dict[str, torch.Tensor]  # replicated layout; empty for a sharded one
    value_head: dict[str, torch.Tensor] | None
    optimizer: dict | None  # replicated layout; None for a sharded one
    scheduler: dict
    sampler: dict
    rng: dict
    sharded: Path | None = None  # a sharded layout's DCP directory, read when applied (every rank together)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and check every file of one checkpoint; :class:`CheckpointError` names the first bad one."""
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise CheckpointError(f"{manifest_path}: missing (the checkpoint was never completed)")
    manifest = _read(manifest_path, lambda p: json.loads(p.read_text()))
    files = manifest.get("files") if isinstance(manifest, dict) else None
    layout = manifest.get("layout", REPLICATED) if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") not in (1, FORMAT) or layout not in (REPLICATED, SHARDED):
        raise CheckpointError(f"{manifest_path}: not a format-1 or -{FORMAT} lrn checkpoint manifest")
    # format 1 recorded sizes only: {file: size}; format 2 {file: {"size": ..., "sha256": ...}}
    expected = {rel: entry if isinstance(entry, dict) else {"size": entry} for rel, entry in files.items()}
    for rel, entry in expected.items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if file.stat().st_size != entry.get("size"):
            raise CheckpointError(f"{file}: truncated or overwritten ({file.stat().st_size} bytes, expected "
                                  f"{entry.get('size')})")
    for rel, entry in expected.items():
        if "sha256" in entry and sha256(path / rel) != entry["sha256"]:
            raise CheckpointError(f"{path / rel}: contents changed since it was written (SHA-256 differs from "
                                  "manifest.json)")
    if layout == SHARDED:
        tree = read_tree(path, "state")
        try:
            return Checkpoint(path, TrainState(**tree["trainer"]), {}, None, None, tree["scheduler"], tree["sampler"],
                              tree["rng"], sharded=path / "sharded")
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path}/state.json: unexpected structure ({e})") from None
    model: dict[str, torch.Tensor] = {}
    for file in sorted((path / "model").glob("*.safetensors")):
        model.update(_read(file, lambda p: load_file(str(p))))
    if not model:
        raise CheckpointError(f"{path / 'model'}: no safetensors weights")
    head_file = path / "value_head.safetensors"
    value_head = _read(head_file, lambda p: load_file(str(p))) if head_file.exists() else None
    opt = read_tree(path, "optimizer")
    tree = read_tree(path, "state")
    try:
        state = TrainState(**tree["trainer"])
        return Checkpoint(path, state, model, value_head, opt["optimizer"], opt["scheduler"], tree["sampler"],
                          tree["rng"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}/state.json or optimizer.json: unexpected structure ({e})") from None


def latest_checkpoint(root: Path) -> Checkpoint:
    """The newest checkpoint that reads back completely; damaged ones are reported and skipped."""
    candidates = list_checkpoints(root)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {root}: the run stopped before its first checkpoint "
                              "(trainer.checkpoint_every); start it again as a new run")
    for path in candidates:
        try:
            return read_checkpoint(path)
        except CheckpointError as e:
            log.warning("damaged checkpoint, skipped: %s", e)
    raise CheckpointError(f"no valid checkpoint in {root} (tried {', '.join(p.name for p in candidates)}; "
                          "see the warnings above)")


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Copy ``tensors`` into ``module``; weights missing from the file must be tied to loaded ones."""
    own = module.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    if unexpected:
        raise CheckpointError(f"{where}: weights the model does not have ({', '.join(unexpected[:3])}); "
                              "was the model changed since the run started?")
    loaded = {own[k].data_ptr() for k in tensors}
    untied = [k for k in own if k not in tensors and own[k].data_ptr() not in loaded]
    if untied:
        raise CheckpointError(f"{where}: weights missing from the checkpoint ({', '.join(untied[:3])})")
    try:
        module.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: does not fit the model ({str(e).splitlines()[-1].strip()})") from None


def apply_checkpoint(ckpt: Checkpoint, policy, optimizer, scheduler, sampler, lr: float | None = None) -> TrainState:
    """Load a checkpoint into the freshly built objects; RNG states last, so nothing draws after them.

    ``lr``: the configured base learning rate; if it differs from the checkpoint's (a forced resume),
    the schedule is rescaled to it.
    Either layout loads into either kind of policy: a sharded checkpoint is read by every rank together
    (its shards reshaped to this run's number of processes); a replicated one into a sharded policy
    through the whole tensors every rank has read.
    """
    if ckpt.sharded is not None:
        try:
            sharding.load_state(policy, optimizer, ckpt.sharded)
        except (RuntimeError, ValueError, KeyError) as e:  # DCP's planner: names or shapes that do not match
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise CheckpointError(f"{ckpt.sharded}: does not fit this model and optimizer ({first})") from None
    elif sharding.is_sharded(policy):
        _load_replicated_into_sharded(ckpt, policy, optimizer)
    else:
        _load_replicated(ckpt, policy, optimizer)
    try:
        scheduler.load_state_dict(ckpt.scheduler)
        sampler.load_state_dict(ckpt.sampler)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: optimizer or sampler state does not fit this config ({e})") from None
    if lr is not None and scheduler.base_lrs != [lr] * len(scheduler.base_lrs):
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"], group["initial_lr"] = group["lr"] * lr / base, lr
        scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    set_rng_state(ckpt.rng)
    return ckpt.state


def _check_value_head(ckpt: Checkpoint, policy) -> None:
    if (policy.value_head is None) != (ckpt.value_head is None):
        raise CheckpointError(f"{ckpt.path}: the checkpoint {'has' if ckpt.value_head else 'lacks'} a value head "
                              "and this config does the opposite (ppo.advantage changed?)")


def _load_replicated_into_sharded(ckpt: Checkpoint, policy, optimizer) -> None:
    """A replicated checkpoint (``trainer.strategy=ddp``) into a sharded policy: the same weight checks,
    then the whole tensors scattered to each rank's shards, the optimizer state by parameter name."""
    if hasattr(policy.lm, "peft_config"):
        raise CheckpointError(f"{ckpt.path}: a LoRA checkpoint of trainer.strategy=ddp cannot be resumed under "
                              "trainer.strategy=fsdp; resume with trainer.strategy=ddp")
    _check_value_head(ckpt, policy)
    own = policy.lm.state_dict()
    unexpected = sorted(set(ckpt.model) - set(own))
    if unexpected:
        raise CheckpointError(f"{ckpt.path / 'model'}: weights the model does not have ({', '.join(unexpected[:3])}); "
                              "was the model changed since the run started?")
    tied: dict[int, list[str]] = {}  # a weight tied to another is saved once, under one of its names
    for name, param in policy.lm.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    aliases = {name: names for names in tied.values() for name in names}
    model = {f"lm.{name}": next((ckpt.model[a] for a in aliases.get(name, [name]) if a in ckpt.model), None)
             for name in own}
    missing = sorted(n.removeprefix("lm.") for n, t in model.items() if t is None)
    if missing:
        raise CheckpointError(f"{ckpt.path / 'model'}: weights missing from the checkpoint ({', '.join(missing[:3])})")
    for name, tensor in (ckpt.value_head or {}).items():
        model[f"value_head.{name}"] = tensor
    try:
        sharding.load_full_state(policy, optimizer, model, ckpt.optimizer)
    except (RuntimeError, ValueError, KeyError) as e:
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"{ckpt.path}: does not fit this model and optimizer ({first_line})") from None


def _load_replicated(ckpt: Checkpoint, policy, optimizer) -> None:
    if hasattr(policy.lm, "peft_config"):  # a LoRA run: the checkpoint holds the adapters only
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(policy.lm, ckpt.model)
        if result.unexpected_keys:
            raise CheckpointError(f"{ckpt.path / 'model'}: adapter weights the model does not have "
                                  f"({', '.join(result.unexpected_keys[:3])}); was model.lora changed?")
    else:
        load_weights(policy.lm, ckpt.model, ckpt.path / "model")
    _check_value_head(ckpt, policy)
    if policy.value_head is not None:
        load_weights(policy.value_head, ckpt.value_head, ckpt.path / "value_head.safetensors")
    try:
        optimizer.load_state_dict(ckpt.optimizer)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}: optimizer or sampler state does not fit this config ({e})") from None


def discard_newer(root: Path, ckpt: Checkpoint) -> None:
    """Delete checkpoints newer than the one resumed from (they were found damaged)."""
    for path in list_checkpoints(root):
        if int(path.name[5:]) > ckpt.state.step:  # latest_checkpoint has warned about it
            log.info("deleting damaged checkpoint %s: the run continues from %s", path, ckpt.path.name)
            shutil.rmtree(path, ignore_errors=True)
