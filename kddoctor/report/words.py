"""Sentences every renderer (HTML, Markdown, the terminal) takes from a results.json."""

from __future__ import annotations


def convention_sentence(run: dict) -> str:
    """The KD convention a results.json states, in words (older files hold the sentence itself)."""
    conv = run.get("convention")
    return conv.get("sentence", "") if isinstance(conv, dict) else str(conv or "")
