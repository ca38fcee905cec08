"""The one way a config mistake is reported: a :class:`ConfigError` whose message is one line."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A user-facing configuration mistake; its message is one line naming the key and the fix."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")
