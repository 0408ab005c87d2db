"""The embedded causal-LM demo: tiny byte-level GPT-2 models built from a transformers config (random
init), trained on the CPU in about a minute on the Python standard library's own source (text every
machine has), saved with `save_pretrained` next to a byte-level tokenizer, and diagnosed as `hf:DIR`.

The pair is the LM zoo's `pad_in_loss` pathology (kddoctor.zoo.lm): the student's distillation
loop left padding inside its CE and KD terms.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from .lm.bytes import byte_tokenizer
from .lm.models import gpt2 as _gpt2
from .tiny_lm import SEQ, VOCAB, pretrain, stdlib_text

__all__ = ["DEMO", "DEMO_SEQUENCES", "build_lm_demo_pair", "byte_tokenizer", "gpt2"]

DEMO = {
    "teacher": (96, 2, 4),
    "student": (32, 1, 2),
    "teacher_steps": 600,
    "scenario": "pad_in_loss",
    "version": 2,
}
DEMO_SEQUENCES = 1024  # per split: enough val tokens that a 1-2 point token gap is outside the noise


def gpt2(width: int, layers: int, heads: int) -> nn.Module:
    """A GPT-2 from a config (random init): byte vocabulary, SEQ positions, no dropout."""
    return _gpt2(VOCAB, SEQ, width, layers, heads, pad_token_id=0, bos_token_id=0, eos_token_id=0)


def build_lm_demo_pair(root: Path | None = None) -> tuple[Path, Path]:
    """Train (once, cached under $KDDOCTOR_CACHE) the demo teacher and student; their hf: directories."""
    from .._cache import cache_dir
    from ..lm.models import _transformers
    from . import lm as scenarios
    from .demo import recipe_key

    _transformers("kddoctor demo --task causal-lm")
    d = (root or cache_dir()) / f"lm-demo-{recipe_key(DEMO)}"
    dirs = d / "teacher", d / "student"
    if all((p / "config.json").is_file() for p in dirs):
        return dirs
    torch.manual_seed(0)
    text = stdlib_text(scenarios.TEACHER_FILES)
    n = len(text) // SEQ
    teacher = pretrain(gpt2(*DEMO["teacher"]), text[: n * SEQ].view(n, SEQ), DEMO["teacher_steps"], 0)
    torch.manual_seed(1)
    recipe = scenarios.get(DEMO["scenario"]).distill
    student = scenarios.distill(gpt2(*DEMO["student"]), teacher, recipe, draw=0)
    tok = byte_tokenizer()
    for model, path in zip((teacher, student), dirs, strict=True):
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tok.save_pretrained(partial)
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)  # a killed build never leaves a directory that looks complete
    return dirs
