"""Sentences every renderer (HTML, Markdown, the terminal) takes from a results.json."""

from __future__ import annotations


def convention_sentence(run: dict) -> str:
    """The KD convention a results.json states, in words (older files hold the sentence itself)."""
    conv = run.get("convention")
    return conv.get("sentence", "") if isinstance(conv, dict) else str(conv or "")


def split_size(run: dict, split: str) -> str:
    """'train 1,000 samples', or for a causal LM 'train 258,048 tokens (4,096 sequences)'."""
    n, rows = run["n"][split], (run.get("sequences") or {}).get(split)
    if run.get("task") == "causal-lm":
        return f"{split} {n:,} tokens" + (f" ({rows:,} sequences)" if rows is not None else "")
    return f"{split} {n:,} samples"


def split_sizes(run: dict) -> str:
    """Every split's size, as the header of each renderer says it."""
    return ", ".join(split_size(run, k) for k in run.get("n", {}))
