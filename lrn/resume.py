"""`lrn train resume=<run-dir>`: the resumed job's overrides, and which config changes it accepts.

A resumed job is composed from the run's own overrides (``.hydra/overrides.yaml``) followed by the
new ones, and runs in the same directory. Its config is compared with the run's
``resolved_config.yaml``: only keys that do not change what is being trained may differ
(:data:`HARMLESS`); anything else is refused unless ``force_resume=true``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lrn.config import Config, ConfigError

# Keys (or prefixes ending in ".") that may change on resume: cadences, run length, memory bounds,
# logging, where the warm start is cached, the two non-finite switches (so a run stopped by a NaN can
# go on with skips), and how processes share the model (either checkpoint layout loads under either).
HARMLESS = (
    "resume", "force_resume", "run_name", "trainer.steps", "trainer.eval_every", "trainer.eval_dense_until",
    "trainer.checkpoint_every", "trainer.strategy",
    "trainer.keep_checkpoints", "trainer.debug_nan_step", "ppo.skip_nonfinite", "rollout.batch_size",
    "eval.batch_size", "eval.output_dir", "logger.", "model.warm_start.cache_dir",
)
INVOCATION_KEYS = ("resume", "force_resume")  # about this command, not the run: never carried over


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``sampler=uniform`` -> ``sampler``."""
    return override.split("=", 1)[0].lstrip("+~")


def resume_value(overrides: list[str]) -> str | None:
    """The run directory of a ``resume=...`` override, if any (None for ``resume=null``)."""
    value = None
    for override in overrides:
        if override_key(override) == "resume" and "=" in override:
            value = override.split("=", 1)[1].strip("'\"")
    return None if value in (None, "", "null") else value


def hydra_quote(value: str) -> str:
    """A path as a Hydra override value (quoted unless plainly safe)."""
    if re.fullmatch(r"[\w./-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_overrides(run_dir: Path, args: list[str]) -> list[str]:
    """The resumed job's command line: the run's overrides, the new ones, ``hydra.run.dir=<run_dir>``."""
    if "-m" in args or "--multirun" in args:
        raise ConfigError("resume continues one run; drop -m (resume each run of a sweep on its own)")
    if not (run_dir / "resolved_config.yaml").is_file():
        raise ConfigError(f"resume={run_dir}: not a run directory of lrn train (no resolved_config.yaml)")
    if not any(re.fullmatch(r"step_\d+", p.name) for p in (run_dir / "checkpoints").glob("step_*")):
        raise ConfigError(f"resume={run_dir}: no checkpoint in {run_dir / 'checkpoints'}; the run stopped before "
                          "its first checkpoint (trainer.checkpoint_every): start it again as a new run")
    saved = run_dir / ".hydra" / "overrides.yaml"
    original = [str(o) for o in OmegaConf.load(saved)] if saved.exists() else []
    new = [a for a in args if "=" in a and not a.startswith("-")]
    flags = [a for a in args if a not in new]  # --cfg job, -m ...: kept, in order, after the overrides
    merged: dict[str, str] = {}
    for override in original:
        key = override_key(override)
        if not key.startswith("hydra") and key not in INVOCATION_KEYS:
            merged[key] = override
    for override in new:
        key = override_key(override)
        if key == "resume":
            override = f"resume={hydra_quote(str(run_dir))}"
        merged.pop(key, None)  # re-insert so that the new value comes last
        merged[key] = override
    return [*merged.values(), f"hydra.run.dir={hydra_quote(str(run_dir))}", *flags]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, child in node.items() for k, v in flatten(child, f"{prefix}{key}.").items()}


def config_changes(old: dict, new: dict, defaults: dict | None = None) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every key that differs and is not :data:`HARMLESS`.

    ``defaults``: the schema's default config; a key the old config lacks (lrn gained it after the run
    started) is no change while the new config leaves it at its default."""
    a, b, d = flatten(old), flatten(new), flatten(defaults or {})
    missing = object()
    changes = []
    for key in dict.fromkeys([*a, *b]):
        if key in HARMLESS or key.startswith(tuple(h for h in HARMLESS if h.endswith("."))):
            continue
        if key not in a and key in d and b.get(key, missing) == d[key]:
            continue
        if a.get(key, missing) != b.get(key, missing):
            changes.append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
    return changes


def check_resume_config(run_dir: Path, config: Config) -> None:
    """Refuse (ConfigError) a resume whose experiment differs from the run's, unless forced."""
    saved = run_dir / "resolved_config.yaml"
    try:
        old = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    except Exception as e:  # noqa: BLE001 - any YAML error becomes one line
        raise ConfigError(f"{saved}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    newest = max(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*") if p.name[5:].isdigit())
    if config.trainer.steps < newest:
        raise ConfigError(f"trainer.steps={config.trainer.steps} is below the run's newest checkpoint (step {newest}); "
                          f"set trainer.steps >= {newest}")
    new = OmegaConf.to_container(OmegaConf.structured(config))
    schema = Config(dataset=type(config.dataset)(), sampler=type(config.sampler)())
    changes = config_changes(old, new, OmegaConf.to_container(OmegaConf.structured(schema)))
    if changes and not config.force_resume:
        listed = ", ".join(f"{k} ({v0!r} -> {v1!r})" for k, v0, v1 in changes[:6])
        more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        raise ConfigError(f"resume={run_dir}: changed from the run's resolved_config.yaml: {listed}{more}; only "
                          "cadences, trainer.steps, batch sizes and logger.* may change on resume "
                          "(add force_resume=true to resume anyway)")
