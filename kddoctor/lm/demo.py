"""The embedded causal-LM demo: tiny GPT-style byte-level models on the Python standard library's own
source (text every machine has), trained on the CPU in well under a minute and cached.

The teacher (2 layers, width 96) learns from 16 standard-library modules; the student (1 layer, width
48) is distilled from it on one module only, for many steps: it fits its distillation text and falls
behind the teacher on held-out modules.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_write
from ..convention import KDConvention

VOCAB = 256  # bytes
SEQ = 64  # tokens per training and evaluation sequence
DEMO = {"teacher_steps": 400, "student_steps": 400, "version": 1}
TRAIN_FILES = ("argparse", "ast", "calendar", "csv", "dataclasses", "datetime", "difflib", "enum")
TRAIN_FILES += ("fractions", "functools", "glob", "heapq", "inspect", "json/decoder", "random", "string")
STUDENT_FILES = ("argparse",)
VAL_FILES = ("textwrap", "shlex", "statistics", "tokenize")


class TinyGPT(nn.Module):
    """A decoder-only transformer: token + position embeddings, pre-norm causal self-attention blocks."""

    def __init__(self, width: int = 96, layers: int = 2, heads: int = 4, vocab: int = VOCAB) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(SEQ, width)
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        h = self.tok(input_ids) + self.pos(torch.arange(length, device=input_ids.device))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=input_ids.device)
        return self.head(self.norm(self.blocks(h, mask=causal, is_causal=True)))


def teacher_lm() -> nn.Module:
    return TinyGPT(width=96, layers=2)


def student_lm() -> nn.Module:
    return TinyGPT(width=48, layers=1, heads=2)


def _text(names: tuple[str, ...]) -> torch.Tensor:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((stdlib / f"{n}.py").read_bytes() for n in names)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def _sequences(tokens: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    n = len(tokens) // SEQ
    seqs = tokens[: n * SEQ].view(n, SEQ)
    return seqs[:limit] if limit else seqs


def loaders(batch_size: int = 32, max_sequences: int = 256) -> dict:
    """Data factory: batches as Hugging Face collators give them (input_ids, attention_mask, labels).
    train: the student's distillation text; val: modules neither model was trained on."""

    def batches(seqs: torch.Tensor) -> list[dict]:
        return [
            {"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b.clone()}
            for b in seqs.split(batch_size)
        ]

    return {
        "train": batches(_sequences(_text(STUDENT_FILES), max_sequences)),
        "val": batches(_sequences(_text(VAL_FILES), max_sequences)),
    }


def _train(
    model: nn.Module, seqs: torch.Tensor, steps: int, teacher: nn.Module | None, seed: int
) -> nn.Module:
    """Next-token training (teacher None) or KD: (1-0.7)*CE + 0.7*T²*KL per token at T=2."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    kd = KDConvention.from_alpha(0.7, temperature=2.0)
    model.train()
    for _ in range(steps):
        x = seqs[torch.randint(0, len(seqs), (32,), generator=gen)]
        logits = model(x)[:, :-1].reshape(-1, VOCAB)
        y = x[:, 1:].reshape(-1)
        if teacher is None:
            loss = F.cross_entropy(logits, y)
        else:
            with torch.no_grad():
                t = teacher(x)[:, :-1].reshape(-1, VOCAB)
            loss = kd.loss(logits, t, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def build_lm_demo_pair(root: Path | None = None) -> tuple[Path, Path]:
    """Train (once, cached under $KDDOCTOR_CACHE) the demo teacher and student; their checkpoint paths."""
    from ..demo import cache_dir, recipe_key

    d = (root or cache_dir()) / f"lm-demo-{recipe_key(DEMO)}"
    t_path, s_path = d / "teacher.pt", d / "student.pt"
    if t_path.is_file() and s_path.is_file():
        return t_path, s_path
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    teacher = _train(teacher_lm(), _sequences(_text(TRAIN_FILES)), DEMO["teacher_steps"], None, seed=0)
    torch.manual_seed(1)
    student = _train(student_lm(), _sequences(_text(STUDENT_FILES)), DEMO["student_steps"], teacher, seed=1)
    atomic_write(d, {"teacher.pt": lambda f: torch.save(teacher.state_dict(), f)})
    atomic_write(d, {"student.pt": lambda f: torch.save(student.state_dict(), f)})
    return t_path, s_path
