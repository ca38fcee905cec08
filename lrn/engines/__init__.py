"""Rollout engines behind one protocol: :class:`SamplingSpec` in, token ids (and log-probs) out."""

from lrn.engines.base import Engine, Generation, SamplingSpec, derive_seed, finish
from lrn.engines.hf import HFEngine

__all__ = ["Engine", "Generation", "HFEngine", "SamplingSpec", "derive_seed", "finish"]
