"""Causal-LM distillation: the token-level pass over teacher and student, the LM checks and causes.

`evaluate_lm` streams a split's batches (`input_ids`, `attention_mask`, `labels` with -100 masked, as
Hugging Face collators produce them) through both models and scores them on the tokens the loss
counts (`kddoctor.metrics.tokens.TokenMetrics`) and gathers the facts the LM checks read
(`facts.LMFacts`); the one pipeline (`api.diagnose`, `tasks.causal_lm`) runs the registry's checks and
ranks the causes (lm_causes.toml). `models` loads `hf:DIR`; the LM zoo and demo live in `kddoctor.zoo`.
"""

from .engine import evaluate_lm, lm_batch, lm_logits

__all__ = ["evaluate_lm", "lm_batch", "lm_logits"]
