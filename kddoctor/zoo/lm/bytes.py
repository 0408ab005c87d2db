"""The `bytes` family of the LM zoo (the first zoo): pure-torch TinyGPTs over the bytes of the Python
standard library's source, diagnosed in process.

Data: the source split at random points into documents of 24-64 bytes, right-padded to 64 with byte 0
(never in source text; attention_mask 0, labels -100). One teacher (2 layers, width 96) learns the
teacher modules; students (1 layer, width 48) distill from it on the distillation modules. Val is held
out from both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..._io import atomic_write
from ...metrics.tokens import IGNORE
from ..tiny_lm import SEQ, VOCAB, TinyGPT, pretrain, stdlib_text
from . import train
from .catalogue import Distill, LMScenario

PAD = 0  # NUL: no source file holds it
PROMPT = 16  # an SFT-style collator masks this many leading tokens
PROMPT_SKEW = {"random": 1.0, "skewed": 3.0}  # SFT-style rows: how short their answers tend to be
TEACHER_FILES = ("argparse", "ast", "calendar", "csv", "dataclasses", "datetime", "difflib", "enum")
TEACHER_FILES += ("fractions", "functools", "inspect", "random", "string", "textwrap", "typing")
DISTILL_FILES = ("argparse", "ast", "csv", "enum", "functools", "random")
VAL_FILES = ("shlex", "statistics", "tokenize", "heapq")
RECIPE_VERSION = 1
# another tokenizer: the teacher of `tokenizer_mismatch` learned text whose lowercase letters map to
# other ids (a <-> n, b <-> o, ...); the student's pipeline then hands it the plain ids
ROT13 = torch.arange(VOCAB)
ROT13[97:123] = (torch.arange(26) + 13) % 26 + 97


BOS = 2  # STX: no source file holds it; the `bos` text plant puts it first in every row


def with_bos(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with a BOS first (each document shifted right by one, its last byte cut at SEQ)."""
    out = torch.full_like(ids, PAD)
    out[:, 0], out[:, 1:] = BOS, ids[:, :-1]
    return out, (lengths + 1).clamp_max(SEQ)


def documents(
    names: tuple[str, ...], seed: int, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 24-64 byte documents of the modules, right-padded: (ids [N, SEQ], lengths [N])."""
    text = stdlib_text(names)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(24, SEQ + 1, (len(text) // 24,), generator=gen)
    ends = lengths.cumsum(0)
    lengths = lengths[ends <= len(text)]
    order = torch.randperm(len(lengths), generator=gen)[:limit] if limit else torch.arange(len(lengths))
    starts = (lengths.cumsum(0) - lengths)[order]
    lengths = lengths[order]
    ids = torch.full((len(order), SEQ), PAD, dtype=torch.long)
    for row, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        ids[row, :n] = text[s : s + n]
    return ids, lengths


def collate(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    prompt: bool = False,
    pad_in_loss: bool = False,
    prompts: torch.Tensor | None = None,
) -> dict:
    """An HF-collator batch: attention_mask over the document, labels -100 on padding (and prompt: the
    first PROMPT tokens, or each row's own `prompts` tokens)."""
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    labels = ids.clone() if pad_in_loss else ids.masked_fill(mask == 0, IGNORE)
    if prompt:
        labels[:, :PROMPT] = IGNORE
    if prompts is not None:
        labels = labels.masked_fill(torch.arange(SEQ)[None] < prompts[:, None], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_prompts(lengths: torch.Tensor, seed: int, skew: float = 1.0) -> torch.Tensor:
    """Each document's prompt length for SFT-style rows: a seeded random share of the document, so the
    rows count from 3 tokens to all of theirs (as prompt/answer pairs of any length do); the answer's
    share of a row is u**skew (u uniform): a larger skew makes most answers short."""
    u = torch.rand(len(lengths), generator=torch.Generator().manual_seed(seed))
    return ((1 - u**skew) * (lengths - 3).clamp_min(0)).long()


def loaders(
    draw: int = 0,
    train_documents: int | None = None,
    train_prompt: bool = False,
    val_prompt: bool = False,
    sequences: int = 256,
    batch_size: int = 32,
    train_bos: bool = False,
    prompts: str = "none",
) -> dict:
    """Data factory: the student's distillation documents (train) and held-out modules (val); `prompts`
    'random' or 'skewed' (PROMPT_SKEW): both splits are SFT-style rows, each with its own prompt masked
    (`sft_prompts`)."""
    tr_ids, tr_len = documents(DISTILL_FILES, 100 + draw, train_documents)
    if train_bos:
        tr_ids, tr_len = with_bos(tr_ids, tr_len)
    va_ids, va_len = documents(VAL_FILES, 200 + draw)
    skew = PROMPT_SKEW.get(prompts)
    tr_p, va_p = (
        sft_prompts(n, seed + draw, skew) if skew else torch.zeros_like(n)  # zeros: no row's own prompt
        for n, seed in ((tr_len, 300), (va_len, 400))
    )
    tr_ids, tr_len, va_ids, va_len, tr_p, va_p = (
        x[:sequences] for x in (tr_ids, tr_len, va_ids, va_len, tr_p, va_p)
    )

    def batches(ids, lengths, prompt, lead):
        parts = zip(ids.split(batch_size), lengths.split(batch_size), lead.split(batch_size), strict=True)
        return [collate(i, n, prompt, prompts=p) for i, n, p in parts]

    return {
        "train": batches(tr_ids, tr_len, train_prompt, tr_p),
        "val": batches(va_ids, va_len, val_prompt, va_p),
    }


def teacher_lm() -> nn.Module:
    return TinyGPT(width=96, layers=2)


def student_lm(width: int = 48, layers: int = 1) -> nn.Module:
    return TinyGPT(width=width, layers=layers, heads=2)


def distill(student: nn.Module, teacher: nn.Module, d: Distill, draw: int) -> nn.Module:
    """KD of a student on 32 random distillation documents a step, as the recipe `d` says."""
    ids, lengths = documents(DISTILL_FILES, 100 + draw, d.documents)
    if d.text == "bos":
        ids, lengths = with_bos(ids, lengths)
    gen = torch.Generator().manual_seed(10 + draw)
    skew = PROMPT_SKEW.get(d.prompts)
    prompts = sft_prompts(lengths, 300 + draw, skew) if skew else None

    def next_batch() -> dict:
        pick = torch.randint(0, len(ids), (32,), generator=gen)
        lead = prompts[pick] if prompts is not None else None
        return collate(ids[pick], lengths[pick], pad_in_loss=d.pad_in_loss, prompts=lead)

    return train.distill(student, teacher, d, next_batch, VOCAB)


def _root(root: Path | None) -> Path:
    from ..._cache import cache_dir

    return (root or cache_dir()) / f"lm-zoo-v{RECIPE_VERSION}"


def teacher(kind: str = "base", root: Path | None = None) -> nn.Module:
    """The zoo teacher (trained once, cached): on the teacher modules, or on their rot13 ids."""
    path = _root(root) / f"teacher-{kind}.pt"
    model = teacher_lm()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    text = stdlib_text(TEACHER_FILES)
    if kind == "rot13":
        text = ROT13[text]
    n = len(text) // SEQ
    torch.manual_seed(0)
    model = pretrain(teacher_lm(), text[: n * SEQ].view(n, SEQ), 600, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.parent, {path.name: lambda f: torch.save(model.state_dict(), f)})
    return model


def student(scn: LMScenario, draw: int = 0, root: Path | None = None) -> nn.Module:
    """The scenario's distilled student (trained once per draw, cached)."""
    d = scn.distill
    path = _root(root) / f"student-{hashlib.sha256(d.key().encode()).hexdigest()[:12]}-d{draw}.pt"
    model = student_lm(d.width, d.layers)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(1000 + draw)
    model = student_lm(d.width, d.layers)
    model = distill(model, model if d.teacher == "self" else teacher(d.teacher, root), d, draw)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.parent, {path.name: lambda f: torch.save(model.state_dict(), f)})
    return model


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (the ByteLevel pre-tokenizer's alphabet)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return chars


def byte_tokenizer(pad_id: int = 0):
    """A transformers tokenizer whose ids are the raw bytes (so id b is byte b); NUL pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _bytes_to_unicode()
    tok = Tokenizer(models.BPE({c: b for b, c in chars.items()}, merges=[]))  # no merges: one id per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=chars[pad_id])
