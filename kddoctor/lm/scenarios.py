"""The causal-LM scenario zoo: tiny byte-level GPTs on the Python standard library's source, each
pathology from the LM issue trackers planted in the student's distillation (or the eval collator), and
its counterfactual that fixes only that factor.

Data: the source split at random points into documents of 24-64 bytes, right-padded to 64 with byte 0
(never in source text; attention_mask 0, labels -100). One teacher (2 layers, width 96) learns the
teacher modules; students (1 layer, width 48) distill from it on the distillation modules. Val is held
out from both. Draw 0 is the half the LM catalogue (lm_causes.toml) was tuned on; draw 1 is held back
(other seeds: other documents, another student initialisation and batch order).

    from kddoctor.lm import scenarios
    diag = scenarios.run("pad_in_loss", draw=1)   # diagnose one (training it once, cached)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write
from ..convention import KDConvention
from ..metrics.tokens import IGNORE
from .engine import lm_logits
from .tiny import SEQ, VOCAB, TinyGPT, pretrain, stdlib_text

PAD = 0  # NUL: no source file holds it
PROMPT = 16  # an SFT-style collator masks this many leading tokens
TEACHER_FILES = ("argparse", "ast", "calendar", "csv", "dataclasses", "datetime", "difflib", "enum")
TEACHER_FILES += ("fractions", "functools", "inspect", "random", "string", "textwrap", "typing")
DISTILL_FILES = ("argparse", "ast", "csv", "enum", "functools", "random")
VAL_FILES = ("shlex", "statistics", "tokenize", "heapq")
RECIPE_VERSION = 1
# another tokenizer: the teacher of `tokenizer_mismatch` learned text whose lowercase letters map to
# other ids (a <-> n, b <-> o, ...); the student's pipeline then hands it the plain ids
ROT13 = torch.arange(VOCAB)
ROT13[97:123] = (torch.arange(26) + 13) % 26 + 97


@dataclass(frozen=True)
class Distill:
    """How a student was distilled (each field a factor a scenario plants)."""

    steps: int = 300
    documents: int | None = None  # distill on only this many documents (None: all)
    alpha_kd: float = 0.5
    temperature: float = 2.0
    reduction: str = "token"  # token | batchmean
    top_k: int | None = None  # a top-k truncated, renormalized teacher target
    kd_dtype: str = "float32"
    pad_in_loss: bool = False  # padding counted by CE and KD
    teacher: str = "base"  # base | rot13 (trained on another tokenization)
    lr: float = 3e-3
    width: int = 48  # the student's size
    layers: int = 1


@dataclass(frozen=True)
class LMScenario:
    name: str
    expected: str | None
    description: str
    distill: Distill = Distill()
    stated: dict = field(default_factory=dict)  # convention.resolve() keywords the user states
    data: dict = field(default_factory=dict)  # loaders() keywords
    fix: dict = field(default_factory=dict)  # what the counterfactual changes: distill/stated/data

    def fixed(self) -> LMScenario:
        return replace(
            self,
            name=f"{self.name}_fixed",
            expected=None,
            distill=replace(self.distill, **self.fix.get("distill", {})),
            stated={**self.stated, **self.fix.get("stated", {})},
            data={**self.data, **self.fix.get("data", {})},
            fix={},
        )


SCENARIOS = [
    LMScenario("healthy", None, "a student distilled per token on all its documents"),
    LMScenario(
        "healthy_kd_heavy", None, "healthy, with alpha 0.9 and T 1", Distill(alpha_kd=0.9, temperature=1.0)
    ),
    LMScenario(
        "kd_batchmean",
        "alpha_imbalance",
        "KL reduced with 'batchmean' on [B, L, V]: divided by the batch only, the KD term grows with length",
        Distill(alpha_kd=0.3, reduction="batchmean"),
        stated={"reduction": "batchmean"},
        fix={"distill": {"reduction": "token"}, "stated": {"reduction": "token"}},
    ),
    LMScenario(
        "topk_target",
        "alpha_imbalance",
        "the KD target is the teacher's top-2 logits, renormalized",
        Distill(top_k=2),
        stated={"top_k": 2},
        fix={"distill": {"top_k": None}, "stated": {"top_k": None}},
    ),
    LMScenario(
        "pad_in_loss",
        "distribution_mismatch",
        "padding left inside the CE and KD terms",
        Distill(pad_in_loss=True),
        fix={"distill": {"pad_in_loss": False}},
    ),
    LMScenario(
        "eval_mask_differs",
        "distribution_mismatch",
        "train batches mask a 16-token prompt (SFT collator), val batches count it",
        data={"train_prompt": True, "val_prompt": False},
        fix={"data": {"val_prompt": True}},
    ),
    LMScenario(
        "tokenizer_mismatch",
        "distribution_mismatch",
        "the teacher was trained on another tokenization (lowercase ids rotated) and fed the student's ids",
        Distill(teacher="rot13"),
        fix={"distill": {"teacher": "base"}},
    ),
    LMScenario(
        "bf16_kl",
        "optimization",
        "the KD term computed in bfloat16 at T 0.5",
        Distill(kd_dtype="bfloat16", temperature=0.5),
        stated={"kd_dtype": "bfloat16"},
        fix={"distill": {"kd_dtype": "float32"}, "stated": {"kd_dtype": "float32"}},
    ),
    LMScenario(
        "too_small",
        "insufficient_capacity",
        "a student of width 8 (a sixth of the others)",
        Distill(width=8),
        fix={"distill": {"width": 48}},
    ),
    LMScenario(
        "under_trained",
        "optimization",
        "distillation stopped after 25 of its 300 steps",
        Distill(steps=25),
        fix={"distill": {"steps": 300}},
    ),
    LMScenario(
        "overfit_few_documents",
        "overfitting",
        "distilled on 48 documents for 600 steps (mostly CE)",
        Distill(documents=48, steps=600, alpha_kd=0.2),
        data={"train_documents": 48},
        fix={"distill": {"documents": None}, "data": {"train_documents": None}},
    ),
]
DRAWS = (0, 1)


def get(name: str) -> LMScenario:
    base = name.removesuffix("_fixed")
    for s in SCENARIOS:
        if s.name == base:
            return s.fixed() if name.endswith("_fixed") else s
    raise KeyError(f"no LM scenario {name!r}; one of {', '.join(s.name for s in SCENARIOS)}")


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
    ids: torch.Tensor, lengths: torch.Tensor, prompt: bool = False, pad_in_loss: bool = False
) -> dict:
    """An HF-collator batch: attention_mask over the document, labels -100 on padding (and prompt)."""
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    labels = ids.clone() if pad_in_loss else ids.masked_fill(mask == 0, IGNORE)
    if prompt:
        labels[:, :PROMPT] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loaders(
    draw: int = 0,
    train_documents: int | None = None,
    train_prompt: bool = False,
    val_prompt: bool = False,
    sequences: int = 256,
    batch_size: int = 32,
) -> dict:
    """Data factory: the student's distillation documents (train) and held-out modules (val)."""
    tr_ids, tr_len = documents(DISTILL_FILES, 100 + draw, train_documents)
    va_ids, va_len = documents(VAL_FILES, 200 + draw)
    tr_ids, tr_len, va_ids, va_len = (
        tr_ids[:sequences],
        tr_len[:sequences],
        va_ids[:sequences],
        va_len[:sequences],
    )

    def batches(ids, lengths, prompt):
        return [
            collate(i, n, prompt)
            for i, n in zip(ids.split(batch_size), lengths.split(batch_size), strict=True)
        ]

    return {"train": batches(tr_ids, tr_len, train_prompt), "val": batches(va_ids, va_len, val_prompt)}


def teacher_lm() -> nn.Module:
    return TinyGPT(width=96, layers=2)


def student_lm(width: int = 48, layers: int = 1) -> nn.Module:
    return TinyGPT(width=width, layers=layers, heads=2)


def zoo_teacher() -> nn.Module:
    """SPEC `kddoctor.lm.scenarios:zoo_teacher`: the zoo's teacher (trained once, cached)."""
    return teacher()


def zoo_student() -> nn.Module:
    """SPEC `kddoctor.lm.scenarios:zoo_student`: the zoo's healthy student, draw 0."""
    return student("healthy")


def _logits(model: nn.Module, b: dict) -> torch.Tensor:
    """[B, L, 256] logits of a TinyGPT or a transformers model (rows past the bytes dropped)."""
    return lm_logits(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]))[..., :VOCAB]


def objective(d: Distill) -> KDConvention:
    """The recipe's KD objective as the one KD convention states it (the probes' objective type too)."""
    return KDConvention.from_alpha(
        d.alpha_kd,
        temperature=d.temperature,
        reduction=d.reduction,
        top_k=d.top_k,
        kd_dtype=d.kd_dtype,
        task="causal-lm",
    )


def distill(student: nn.Module, teacher: nn.Module, d: Distill, draw: int) -> nn.Module:
    """KD of a student: (1-a)*CE + a*T²*KL(t||s), both over the counted tokens, as `d` says (the KL
    reduced as the recipe's training code reduces it on each batch)."""
    ids, lengths = documents(DISTILL_FILES, 100 + draw, d.documents)
    loss_of = objective(d)
    gen = torch.Generator().manual_seed(10 + draw)
    opt = torch.optim.AdamW(student.parameters(), lr=d.lr, weight_decay=0.0)
    student.train()
    for _ in range(d.steps):
        pick = torch.randint(0, len(ids), (32,), generator=gen)
        b = collate(ids[pick], lengths[pick], pad_in_loss=d.pad_in_loss)
        s = _logits(student, b)[:, :-1]
        with torch.no_grad():
            t = _logits(teacher, b)[:, :-1]
        loss = loss_of.token_loss(s, t, b["labels"][:, 1:], as_trained=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student.eval()


def _root(root: Path | None) -> Path:
    from .._cache import cache_dir

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


def student(scn: LMScenario | str, draw: int = 0, root: Path | None = None) -> nn.Module:
    """The scenario's distilled student (trained once per draw, cached)."""
    scn = get(scn) if isinstance(scn, str) else scn
    defaults = Distill()
    key = "-".join(  # the size fields came later: at their defaults they leave older keys as they were
        f"{k}={v}"
        for k, v in sorted(vars(scn.distill).items())
        if k not in ("width", "layers") or v != getattr(defaults, k)
    )
    path = _root(root) / f"student-{hashlib.sha256(key.encode()).hexdigest()[:12]}-d{draw}.pt"
    model = student_lm(scn.distill.width, scn.distill.layers)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(1000 + draw)
    model = distill(
        student_lm(scn.distill.width, scn.distill.layers),
        teacher(scn.distill.teacher, root),
        scn.distill,
        draw,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.parent, {path.name: lambda f: torch.save(model.state_dict(), f)})
    return model


def run(scn: LMScenario | str, draw: int = 0, root: Path | None = None):
    """Diagnose one scenario: its teacher, its student and its data, with what the user states."""
    from ..api import diagnose
    from ..convention import resolve

    scn = get(scn) if isinstance(scn, str) else scn
    data = loaders(draw, **scn.data)
    d = scn.distill
    stated = resolve(alpha=d.alpha_kd, temperature=d.temperature, task="causal-lm", **scn.stated)
    return diagnose(
        teacher(d.teacher, root),
        student(scn, draw, root),
        data["train"],
        data["val"],
        task="causal-lm",
        convention=stated,
        device="cpu",
        quick=True,  # steps only: the zoo's probes are deterministic
        teacher_spec="lm-zoo:teacher",
        student_spec=f"lm-zoo:{scn.name}",
    )


def judge(scn: LMScenario, diag) -> bool:
    """Correct: the planted cause leads and is likely; a healthy or fixed pair has no likely cause."""
    if scn.expected is None:
        return diag.verdict["kind"] == "healthy"
    return diag.verdict["kind"] == "likely" and diag.verdict["lead"] == scn.expected
