"""Causal-LM distillation (in progress): the token-level pass over teacher and student.

`evaluate_lm` streams a split's batches (`input_ids`, `attention_mask`, `labels` with -100 masked, as
Hugging Face collators produce them) through both models and scores them on the tokens the loss
counts (`kddoctor.metrics.tokens.TokenMetrics`); `api.diagnose_lm` reports it. LM checks and causes are
not built yet.
"""

from .engine import evaluate_lm, lm_batch, lm_logits

__all__ = ["evaluate_lm", "lm_batch", "lm_logits"]
