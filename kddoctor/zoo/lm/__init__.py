"""The causal-LM scenario zoo: each pathology from the LM issue trackers planted in a student's
distillation (or in a collator), at one or two doses, and its counterfactual that fixes only that
factor; families of several architectures, corpora and tokenizers (`families`, `catalogue`).

    from kddoctor.zoo import lm
    diag = lm.run("pad_in_loss", draw=1)        # diagnose one (training it once, cached)
    diag = lm.run("llama:too_small_severe")     # a Hugging Face family, through hf: directories

Draw 0 is the half the LM catalogue (lm_causes.toml) was tuned on; draw 1 is held back (other seeds:
other documents, another student initialisation and batch order), though misses it showed were mended
since; draw 2 (other seeds again) was built after the catalogue was last set and run once.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from . import bytes as _bytes
from .catalogue import DRAWS, KNOWN_MISSES, SCENARIOS, Distill, LMScenario, get
from .families import FAMILIES
from .train import objective

__all__ = [
    "DRAWS",
    "FAMILIES",
    "KNOWN_MISSES",
    "SCENARIOS",
    "Distill",
    "LMScenario",
    "get",
    "judge",
    "loaders",
    "pair_key",
    "run",
]
__all__ += ["objective", "student", "teacher", "zoo_student", "zoo_teacher"]
TEACHER_FILES = _bytes.TEACHER_FILES
distill = _bytes.distill


def loaders(draw: int = 0, family: str = "bytes", **kw) -> dict:
    """Data factory (`--data kddoctor.zoo.lm:loaders`): a family's train and val batches."""
    if family == "bytes":
        return _bytes.loaders(draw, **kw)
    from . import hf

    return hf.loaders(family, draw, **kw)


def teacher(kind: str = "base", root: Path | None = None) -> nn.Module:
    """The bytes family's teacher (trained once, cached)."""
    return _bytes.teacher(kind, root)


def student(scn: LMScenario | str, draw: int = 0, root: Path | None = None) -> nn.Module:
    """A bytes-family scenario's distilled student (trained once per draw, cached)."""
    return _bytes.student(get(scn) if isinstance(scn, str) else scn, draw, root)


def zoo_teacher() -> nn.Module:
    """SPEC `kddoctor.zoo.lm:zoo_teacher`: the bytes zoo's teacher (trained once, cached)."""
    return teacher()


def zoo_student() -> nn.Module:
    """SPEC `kddoctor.zoo.lm:zoo_student`: the bytes zoo's healthy student, draw 0."""
    return student("healthy")


def stated(scn: LMScenario) -> dict:
    """What the user states (flags.resolve keywords): the recipe's alpha and T and the scenario's own
    statement, or, when that names a trainer's preset, that statement alone."""
    if "preset" in scn.stated:
        return dict(scn.stated)
    return {"alpha": scn.distill.alpha_kd, "temperature": scn.distill.temperature, **scn.stated}


def pair_key(scn: LMScenario) -> str:
    """What makes a pair: its family, student recipe, data and resolved stated objective. A fix that
    rebuilds a healthy pair exactly has the healthy pair's key, and its diagnosis (which runs by steps
    alone) repeats that pair's."""
    import json

    from ...flags import resolve

    # one fixed vocabulary for every family: the key compares resolved objectives, it states none
    conv = resolve(task="causal-lm", **stated(scn)).to_dict(256)
    return json.dumps([scn.family, repr(scn.distill), scn.data, conv], sort_keys=True, default=str)


def _stated_flags(scn: LMScenario) -> dict:
    """What the user states, as `kddoctor diagnose` flags (DiagnoseArgs fields)."""
    names = {"reduction": "kd_reduction", "top_k": "teacher_top_k", "preset": "convention"}
    flags = {names.get(k, k): v for k, v in stated(scn).items()}
    if "no_t2" in flags:
        flags["no_t2"] = bool(flags["no_t2"])
    return flags


def run(scn: LMScenario | str, draw: int = 0, root: Path | None = None):
    """Diagnose one scenario as its user would: bytes pairs in process, the Hugging Face families through
    `kddoctor diagnose --task causal-lm --teacher hf:DIR --student hf:DIR` (quick budgets: the probes run
    by steps alone, so a run repeats its results)."""
    scn = get(scn) if isinstance(scn, str) else scn
    if not FAMILIES[scn.family].hf:
        return _run_bytes(scn, draw, root)
    from ...runner import DiagnoseArgs, diagnose_command
    from . import hf

    t_dir, s_dir = hf.directories(scn, draw, root)
    data = {"family": scn.family, "draw": draw, **scn.data}
    args = DiagnoseArgs(
        teacher=f"hf:{t_dir}",
        student=f"hf:{s_dir}",
        data="kddoctor.zoo.lm:loaders",
        data_arg=[f"{k}={v!r}" for k, v in data.items()],
        task="causal-lm",
        device="cpu",
        quick=True,
        no_cache=True,
        quiet=True,
        **_stated_flags(scn),
    )
    diag, _ = diagnose_command(args)
    return diag


def _run_bytes(scn: LMScenario, draw: int, root: Path | None):
    from ...api import diagnose
    from ...flags import resolve

    data = loaders(draw, **scn.data)
    d = scn.distill
    convention = resolve(task="causal-lm", **stated(scn))
    s = _bytes.student(scn, draw, root)
    return diagnose(
        s if d.teacher == "self" else teacher(d.teacher, root),  # the user passed the student twice
        s,
        data["train"],
        data["val"],
        task=_bytes_task(),
        convention=convention,
        device="cpu",
        quick=True,  # steps only: the zoo's probes are deterministic
        teacher_spec="lm-zoo:teacher",
        student_spec=f"lm-zoo:{scn.name}",
    )


def _bytes_task():
    """The causal-LM task as a user of byte tokenizers states it: both models read bytes (the demo's
    byte-level tokenizer, whose id b is byte b)."""
    from ...lm.models import tokenizer_info
    from ...tasks.causal_lm import CausalLMTask

    info = tokenizer_info(_bytes.byte_tokenizer())
    return CausalLMTask(
        tokenizers={"teacher": info, "student": info}, vocab_text=([chr(b) for b in range(256)], set())
    )


def judge(scn: LMScenario, diag) -> bool:
    """Correct: the planted cause leads and is likely (a Hugging Face family's mild dose: first or second,
    and the verdict is no 'healthy'); a healthy or fixed pair has no likely cause."""
    if scn.verdict is not None:
        return diag.verdict["kind"] == scn.verdict
    if scn.expected is None:
        return diag.verdict["kind"] == "healthy"
    if FAMILIES[scn.family].hf and scn.dose == "mild":
        top2 = [c["id"] for c in diag.causes[:2]]
        return diag.verdict["kind"] != "healthy" and scn.expected in top2
    return diag.verdict["kind"] == "likely" and diag.verdict["lead"] == scn.expected
