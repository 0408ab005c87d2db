"""The Hugging Face families of the LM zoo: a BPE tokenizer trained on other text, teachers pretrained on
their corpus, students distilled on documents of it, all saved with `save_pretrained` (model and
tokenizer) and handed to kddoctor as `hf:` directories, as a user's would be.

Rows are documents cut at line boundaries (`text.documents`), tokenized, truncated to the family's
`seq` tokens and right-padded with the pad id (attention_mask 0, labels -100), as a collator pads.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

import torch
from torch import nn

from ..._io import atomic_write
from ...metrics.tokens import IGNORE
from . import text, train
from .catalogue import LMScenario
from .families import FAMILIES, Family
from .models import BOS, EOS, PAD

DISTILL_DOCUMENTS = 4096  # the student's distillation set (three epochs at 800 steps of 16)
SEQUENCES = 512  # per split in the diagnosis loaders
RECIPE_VERSION = 1
SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")


def root_dir(root: Path | None) -> Path:
    from ..._cache import cache_dir

    return (root or cache_dir()) / f"lm-zoo-hf-v{RECIPE_VERSION}"


@functools.cache
def tokenizer(vocab: int = 1024, kind: str = "base"):
    """A byte-level BPE (a `tokenizers.Tokenizer`) trained on the tokenizer text; ids 0-2 are SPECIALS.
    `kind` 'other' learns its merges from the prose corpus instead: another tokenizer, same size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    source = text.tokenizer_text() if kind == "base" else text.split_text("prose", "teacher")
    tok.train_from_iterator(source, trainer)
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=SPECIALS[PAD], bos_token=SPECIALS[BOS], eos_token=SPECIALS[EOS]
    )


def rows(docs: list[str], fam: Family, *, bos: bool = False, tok=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents as [N, seq] ids right-padded with PAD, and their lengths (BOS first when asked)."""
    tok = tok or tokenizer(fam.vocab)
    lead = [BOS] if bos else []
    encoded = [(lead + e.ids)[: fam.seq] for e in tok.encode_batch(docs)]
    ids = torch.full((len(encoded), fam.seq), PAD, dtype=torch.long)
    lengths = torch.tensor([len(e) for e in encoded])
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
    return ids, lengths


def collate(ids: torch.Tensor, lengths: torch.Tensor, *, pad_in_loss: bool = False) -> dict:
    """A collator's batch: attention_mask over each document, labels -100 on padding."""
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    labels = ids.clone() if pad_in_loss else ids.masked_fill(mask == 0, IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def split_docs(fam: Family, split: str, draw: int, count: int, transform: str = "none") -> list[str]:
    """`count` documents of a split (distill: the student's text; val: held out), prepared as asked:
    `transform` is a text.TRANSFORMS name, optionally '@share' of the documents ('lower@0.5'), or
    'mix@share' (that share of documents from the other corpus: another document mix)."""
    seed = {"distill": 100, "val": 200}[split] + draw
    docs = text.documents(text.split_text(fam.corpus, split), seed, count)
    name, _, share = transform.partition("@")
    pick = text.chosen(len(docs), float(share or 1.0), seed)
    if name == "mix":
        other = text.documents(text.split_text(text.OTHER[fam.corpus], split), seed + 7, count)
        return [other[i] if pick[i] else d for i, d in enumerate(docs)]
    return [text.TRANSFORMS[name](d) if pick[i] else d for i, d in enumerate(docs)]


def loaders(
    family: str,
    draw: int = 0,
    train_documents: int | None = None,
    train_text: str = "none",
    sequences: int = SEQUENCES,
    batch_size: int = 32,
) -> dict:
    """Data factory: the student's distillation documents as it saw them (train) and held-out text (val)."""
    fam = FAMILIES[family]
    n_train = min(sequences, train_documents or sequences)
    splits = {
        "train": rows(split_docs(fam, "distill", draw, n_train, train_text), fam),
        "val": rows(split_docs(fam, "val", draw, sequences), fam),
    }
    return {
        name: [collate(i, n) for i, n in zip(ids.split(batch_size), lengths.split(batch_size), strict=True)]
        for name, (ids, lengths) in splits.items()
    }


def _save(model: nn.Module, path: Path) -> None:
    atomic_write(path.parent, {path.name: lambda f: torch.save(model.state_dict(), f)})


def teacher(family: str, kind: str = "base", root: Path | None = None) -> nn.Module:
    """The family's teacher (trained once, cached): next-token CE on its packed teacher text."""
    fam = FAMILIES[family]
    path = root_dir(root) / f"{family}-teacher-{kind}.pt"
    torch.manual_seed(0)
    model = fam.model(*fam.teacher)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    tok = tokenizer(fam.vocab, "other" if kind == "other" else "base")
    stream = [i for t in text.split_text(fam.corpus, "teacher") for i in tok.encode(t).ids]
    n = len(stream) // fam.seq
    packed = torch.tensor(stream[: n * fam.seq], dtype=torch.long).view(n, fam.seq)
    schedule = train.cosine(fam.teacher_steps, fam.lr, warmup=100)
    model = train.pretrain(model, packed, fam.teacher_steps, fam.batch, schedule, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(model, path)
    return model


def student(scn: LMScenario, draw: int = 0, root: Path | None = None) -> nn.Module:
    """The scenario's distilled student (trained once per draw, cached)."""
    fam, d = FAMILIES[scn.family], scn.distill
    key = hashlib.sha256(f"{scn.family}|{d.key()}".encode()).hexdigest()[:12]
    path = root_dir(root) / f"{scn.family}-student-{key}-d{draw}.pt"
    torch.manual_seed(1000 + draw)
    model = fam.model(d.width, d.layers)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    ids, lengths = rows(split_docs(fam, "distill", draw, d.documents or DISTILL_DOCUMENTS, d.text), fam)
    gen = torch.Generator().manual_seed(10 + draw)

    def next_batch() -> dict:
        pick = torch.randint(0, len(ids), (fam.batch,), generator=gen)
        return collate(ids[pick], lengths[pick], pad_in_loss=d.pad_in_loss)

    t = teacher(scn.family, d.teacher, root)
    schedule = train.cosine(fam.steps, d.lr, warmup=fam.steps // 20)
    model = train.distill(model, t, d, next_batch, fam.vocab, schedule)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(model, path)
    return model


def directories(scn: LMScenario, draw: int = 0, root: Path | None = None) -> tuple[Path, Path]:
    """The scenario's teacher and student as `save_pretrained` directories with their tokenizers."""
    fam, d = FAMILIES[scn.family], scn.distill
    base = root_dir(root) / "hf"
    key = hashlib.sha256(f"{scn.family}|{d.key()}".encode()).hexdigest()[:12]
    dirs = base / f"{scn.family}-teacher-{d.teacher}", base / f"{scn.family}-student-{key}-d{draw}"
    kinds = ("other" if d.teacher == "other" else "base", "base")
    for path, kind, build in zip(
        dirs,
        kinds,
        (lambda: teacher(scn.family, d.teacher, root), lambda: student(scn, draw, root)),
        strict=True,
    ):
        if (path / "config.json").is_file():
            continue
        model = build()
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        hf_tokenizer(tokenizer(fam.vocab, kind)).save_pretrained(partial)
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)  # a killed build never leaves a directory that looks complete
    return dirs
