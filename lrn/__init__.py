"""lrn: PPO fine-tuning of language models on maths, with sampling for learnability."""

__version__ = "0.1.0"
