"""Remedies are right or absent: every remedy of every cause, rendered for a timm, a file and a module
SPEC under several KD conventions, names the user's own setting, never restates it, and its Python
code runs against a toy pair. The catalogue is tested against what the checks emit."""

from __future__ import annotations

import functools
import itertools
import re
import shlex
import textwrap
from dataclasses import replace

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from kddoctor import causes
from kddoctor.convention import KDConvention
from kddoctor.flags import resolve

CONVENTIONS = {
    "kd": resolve(alpha=0.5, no_t2=True, reduction="mean"),  # every setting remedy applies
    "kd-textbook": resolve(alpha=0.7, temperature=4.0),
    "torchdistill": resolve(preset="torchdistill", alpha=0.9, temperature=2.0),
    "mdistiller": resolve(preset="mdistiller", ce_weight=0.5, kd_weight=0.5),
    "repdistiller": resolve(preset="repdistiller", ce_weight=1.0, kd_weight=0.2),
}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "my_models.py"
    path.write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny_student(num_classes=10):
                return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
            """
        )
    )
    return {
        "timm": "timm:resnet10t?in_chans=1",
        "file": f"{path}:tiny_student",
        "module": "kddoctor.zoo.demo:student_cnn",
    }


def _findings(conv: KDConvention, n: int = 10) -> list[dict]:
    """The evidence the remedy context reads, as a run that needs every remedy would report it."""
    rec = conv.to_user(0.95, 8.0, n)
    recommended = {
        "alpha_kd": 0.95,
        "temperature": 8.0,
        "user": rec.user_params(),
        "setting": rec.setting(),
        "code": rec.code(),
        "code_lang": rec.code_lang,
    }
    fix = {"split": "val", "mean": [0.305], "std": [0.376], "train_mean": [0.0], "train_std": [1.0]}
    fix.update(val_mean=[0.305], val_std=[0.376])
    pp = {"normalization_fix": fix, "data_config": {"student": {"mean": [0.3], "std": [0.4]}}}
    member = replace(conv, t2=not conv.t2)  # the checkpoint's fingerprint points to the other T² choice
    fp = {"stated_excess": 1.2, "best_member": "the KD term without T²", "best_code": member.code()}
    return [
        {"id": "alpha_sensitivity", "status": "warn", "evidence": {"recommended": recommended}},
        {"id": "preprocessing_parity", "status": "fail", "evidence": pp},
        {"id": "objective_fingerprint", "status": "fail", "evidence": fp},
    ]


def _toy_namespace() -> dict:
    """What remedy snippets may name (a fresh dict over one toy pair per session)."""
    return dict(_toy_pair())


@functools.cache
def _toy_pair() -> dict:
    """What remedy snippets may name: the user's models, a batch, their loader, optimizer, ..."""
    from torchvision import transforms

    torch.manual_seed(0)
    student = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1)
    teacher = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    s, t = student(x), teacher(x).detach()
    return {
        "torch": torch,
        "F": F,
        "nn": nn,
        "timm": timm,
        "itertools": itertools,
        "student": student,
        "teacher": teacher,
        "x": x,
        "y": y,
        "s": s,
        "t": t,
        "T": 4.0,
        "lr": 1e-3,
        "epochs": 10,
        "loss": F.cross_entropy(s, y),
        "beta": 1.0,
        "train_loader": [(x, y)] * 3,
        "data_cfg": timm.data.resolve_data_config({}, model=student),
        "opt": torch.optim.SGD(student.parameters(), lr=0.1),
        "s_feats": torch.randn(4, 8),
        "t_feats": torch.randn(4, 16),
        "regressor": nn.Linear(8, 16),
        "augment": lambda v: torch.roll(v, 1, dims=3),
        "normalize": lambda v, m, sd: (v - m) / sd,
        "teacher_mean": 0.5,
        "teacher_std": 0.5,
        "student_mean": 0.0,
        "student_std": 1.0,
        "val_transform": transforms.Compose([transforms.ToTensor()]),
    }


def _check_code(code: str, lang: str) -> None:
    if lang == "python":
        exec(code, _toy_namespace())  # noqa: S102  the snippet claims to run: it must
    lines = [line for line in code.splitlines() if not line.lstrip().startswith("#")]  # comments are fine
    if lang == "shell":
        assert lines and all(shlex.split(line)[0] == "python" for line in lines)
    elif lang != "python":
        assert lang == "yaml" and all(re.match(r"^\s*[\w.-]+:( \S+)?$", line) for line in lines)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("spec_kind", ["timm", "file", "module"])
@pytest.mark.parametrize("conv_name", list(CONVENTIONS))
def test_every_remedy_renders_right_or_not_at_all(specs, spec_kind, conv_name):
    conv = CONVENTIONS[conv_name]
    run = {"student": specs[spec_kind], "num_classes": 10, "convention": conv.to_dict(10)}
    ranked = causes.rank(_findings(conv), run)
    for cause in ranked:
        assert len(cause["remedies"]) == len(cause["remedy_code"]) == len(cause["remedy_lang"])
        for say, code, lang in zip(
            cause["remedies"], cause["remedy_code"], cause["remedy_lang"], strict=True
        ):
            assert "?" not in re.sub(r"\?\w+=", "", code) and "None" not in say, say
            assert "{" not in say and "}" not in say, say
            # a setting the remedy proposes is never the user's current one
            for proposed in re.findall(r"^.*: (.*) instead of your (.*?)[.(]", say):
                assert proposed[0] != conv.setting()
            if code:
                _check_code(code, lang)
    words = " ".join(r for c in ranked for r in c["remedies"])
    assert conv.setting() in words  # the remedies speak of the user's setting in the user's words
    capacity = next(c for c in ranked if c["id"] == "insufficient_capacity")
    built = capacity["remedy_code"][0]
    assert specs[spec_kind].split(":")[-1].split("?")[0] in built


def test_every_remedy_is_shown_by_some_run():
    """No remedy is dead: each cause's every remedy renders under one of the test conventions."""
    shown: dict[str, set] = {}
    for conv in CONVENTIONS.values():
        run = {"student": "kddoctor.zoo.demo:student_cnn", "num_classes": 10, "convention": conv.to_dict(10)}
        for c in causes.rank(_findings(conv), run):
            shown.setdefault(c["id"], set()).update(c["remedies"])
    cat = causes.catalogue()
    for cid in causes.CAUSE_IDS:
        assert len(shown[cid]) >= len(cat[cid]["remedies"]), cid


def test_a_remedy_equal_to_the_current_setting_is_dropped():
    conv = resolve(alpha=0.9, temperature=8.0)  # already leans on KD, already soft
    rec = conv.to_user(0.9, 8.0, 10)
    findings = _findings(conv)
    findings[0]["evidence"]["recommended"] = None  # the sweep found nothing better: no rebalance remedy
    ranked = causes.rank(findings, {"num_classes": 10, "convention": conv.to_dict(10)})
    said = [r for c in ranked for r in c["remedies"]]
    assert rec.same_setting(conv)
    assert not any("instead of your" in r for r in said), said
    assert not any(
        r.startswith(("Rebalance", "Lean harder", "Soften", "Restore the T", "Reduce the KL")) for r in said
    )


def test_unknown_placeholder_fails_loudly():
    cause = {"mechanisms": {"m": {}}, "remedies": [{"say": "use {no_such_value}"}]}
    with pytest.raises(KeyError):
        causes.render_remedies(cause, "m", {"applies": {"always"}})


def test_file_and_unknown_specs_build_as_the_user_does(specs):
    from kddoctor.models import spec_code

    ns: dict = {}
    exec(spec_code(specs["file"], 10), ns)  # noqa: S102
    assert isinstance(ns["student"], nn.Module) and ns["student"][1].out_features == 10
    assert "timm.create_model('resnet10t', pretrained=False, in_chans=1, num_classes=10)" in spec_code(
        specs["timm"], 10
    )
    assert spec_code("scenario:healthy", 10) is None and spec_code("student", 10) is None


LM_CONVENTIONS = {
    "kd-per-token": resolve(alpha=0.5, temperature=2.0, task="causal-lm"),
    "kd-batchmean": resolve(alpha=0.3, temperature=2.0, task="causal-lm", reduction="batchmean"),
    "trl-gkd": resolve(preset="trl-gkd", task="causal-lm", temperature=0.9),
    "distillkit": resolve(preset="distillkit", task="causal-lm", top_k=64),
    "distillm": resolve(preset="distillm", task="causal-lm"),
}


def _lm_findings() -> list[dict]:
    """Evidence under which every causal-LM remedy applies (a text statistic that moved, a fingerprint
    that points elsewhere)."""
    pp = {
        "teacher_train_excess": 0.4,
        "class_vanished": 1.0,
        "class_vanished_name": "upper",
        "class_rates": {"upper": {"train": 0.0, "val": 0.041, "within": 0.002}},
        "row_start_shift": 0.0,
        "row_end_shift": 0.0,
        "full_share_shift": 0.0,
    }
    fp = {
        "named": 1.0,
        "objective_excess": 0.5,
        "best_member": "no KD term (CE alone)",
        "best_code": "loss = ce",
    }
    return [
        {"id": "preprocessing_parity", "status": "fail", "evidence": pp},
        {"id": "objective_fingerprint", "status": "fail", "evidence": fp},
    ]


@pytest.mark.parametrize("conv_name", list(LM_CONVENTIONS))
def test_every_lm_remedy_renders_in_the_users_convention(conv_name):
    conv = LM_CONVENTIONS[conv_name]
    run = {"student": "hf:runs/student", "vocab": 1024, "convention": conv.to_dict(1024)}
    ctx = causes.remedy_context(_lm_findings(), {**run, "num_classes": 1024})
    cat = causes.catalogue("lm_causes.toml")
    ctx["applies"] = {r.get("when", "always") for cid in causes.CAUSE_IDS for r in cat[cid]["remedies"]}
    said = []
    for cid in causes.CAUSE_IDS:
        for mech in cat[cid]["mechanisms"]:
            for r in causes.render_remedies(cat[cid], mech, ctx):
                assert "{" not in r["say"] and "None" not in r["say"], r["say"]
                if r["lang"] == "python" and r["code"]:
                    compile(r["code"], cid, "exec")  # the snippet is Python as written
                said.append(r["say"] + r["code"])
    words = " ".join(said)
    assert conv.setting() in words  # the LM remedies speak the user's setting in their words
    assert "'upper' tokens are 0.0% of counted train tokens and 4.1% of val" in words
    assert "no KD term (CE alone)" in words and conv.code() in words


def test_a_text_remedy_names_the_class_whose_rows_one_split_emptied():
    from kddoctor.remedies import _text_fix

    pp = {
        "teacher_train_excess": 0.01,
        "class_vanished": 0.47,
        "row_class_absent_excess": 0.40,
        "row_class_absent_name": "upper",
        "row_class_absent_side": "train",
        "row_class_absent_train": 0.51,
        "row_class_absent_val": 0.07,
    }
    applies: set = set()
    say = _text_fix(pp, applies)["text_fix_say"]
    assert "text_fix" in applies
    assert say.startswith("51% of train rows and 7% of val rows hold no 'upper' token at all")
    assert "the train pipeline lower-cases its text for some of its documents" in say
    assert _text_fix({**pp, "row_class_absent_excess": 0.05}, set())["text_fix_say"] == ""


def test_a_score_is_said_capped_only_when_the_cap_changes_it():
    """A cause whose support is below the gap's strength is not 'capped', even where rounding to four
    decimals puts the two a hair apart; one above the gap is, at the gap's strength."""
    sig = {"check": "c", "key": "k", "lo": 0.0, "hi": 1.0, "weight": 1.0, "fmt": "f2", "say": "k is {v}"}
    cause = {"title": "T", "remedies": [], "mechanisms": {"m": {"title": "m", "support": [sig]}}}
    evidence = {"c": {"k": 0.27803}}
    free = causes._score_cause("x", cause, evidence, 1.0, {})
    assert free["score"] == free["raw_score"] == 0.278
    assert not any("capped" in s for s in free["evidence"])
    capped = causes._score_cause("x", cause, evidence, 0.1, {})
    assert capped["score"] == 0.1 and capped["raw_score"] == 0.278
    assert capped["evidence"][-1].startswith("capped at 0.10")


def test_a_fingerprint_member_a_trainers_config_cannot_state_reads_in_pytorch():
    """GKDConfig has no CE term: where the checkpoint's stillest objective and the stated one read as the
    same config, the remedy writes both losses out in PyTorch, which tells them apart."""
    from kddoctor.convention_text import python_code

    conv = LM_CONVENTIONS["trl-gkd"]
    member = replace(conv, ce_weight=0.5, kd_weight=0.5)
    assert member.code() == conv.code()  # the config reads the same
    fp = {
        "named": 1.0,
        "best_member": "a CE term beside the KD term (half each)",
        "best_code": member.code(),
        "best_python": python_code(member),
    }
    findings = [{"id": "objective_fingerprint", "status": "fail", "evidence": fp}]
    run = {"student": "hf:runs/student", "vocab": 1024, "convention": conv.to_dict(1024), "num_classes": 1024}
    ctx = causes.remedy_context(findings, run)
    assert ctx["fp_lang"] == "python" and "config cannot state the difference" in ctx["fp_code"]
    trained, stated = ctx["fp_code"].split("# what you state:\n")
    assert python_code(member) in trained and stated == python_code(conv) != python_code(member)
    compile(ctx["fp_code"], "fp", "exec")
    yaml_conv = LM_CONVENTIONS["distillkit"]  # DistillKit's YAML states a CE weight: it stays in YAML
    other = replace(yaml_conv, ce_weight=0.0, kd_weight=1.0)
    fp_yaml = {**fp, "best_code": other.code(), "best_python": python_code(other)}
    run_yaml = {**run, "convention": yaml_conv.to_dict(1024)}
    ctx = causes.remedy_context([{**findings[0], "evidence": fp_yaml}], run_yaml)
    assert ctx["fp_lang"] == "yaml" and other.code() in ctx["fp_code"]


def test_lm_remedies_for_a_top_k_target_or_empty_rows_speak_only_to_runs_that_have_them():
    cat = causes.catalogue("lm_causes.toml")

    def said(conv, masks, topk=None):
        run = {"student": "hf:s", "vocab": 1024, "convention": conv.to_dict(1024), "num_classes": 1024}
        found = [{"id": "lm_mask_parity", "status": "pass", "evidence": masks}]
        if topk is not None:
            found.append({"id": "lm_topk", "status": "pass", "evidence": {"dropped_target_mass": topk}})
        ctx = causes.remedy_context(found, run)
        out = []
        for cid in ("alpha_imbalance", "optimization"):
            for mech in cat[cid]["mechanisms"]:
                out += [r["code"] for r in causes.render_remedies(cat[cid], mech, ctx)]
        return "\n".join(out)

    none = {"empty_row_share": 0.0, "empty_batch_share": 0.0}
    plain = said(LM_CONVENTIONS["kd-per-token"], none)
    assert "topk" not in plain and "clamp_min(1)" not in plain
    assert "topk" in said(LM_CONVENTIONS["distillkit"], none)  # a top-64 target
    assert "topk" in said(LM_CONVENTIONS["distillkit"], none, topk=0.08)  # that drops 8 % of the mass
    assert "topk" not in said(LM_CONVENTIONS["distillkit"], none, topk=0.01)  # that keeps nearly all
    tail = replace(LM_CONVENTIONS["distillkit"], top_k_rule="tail")
    assert "topk" not in said(tail, none)  # a tail bucket keeps the mass: the advice would restate it
    assert "topk" not in said(tail, none, topk=0.0)
    assert "clamp_min(1)" in said(LM_CONVENTIONS["kd-per-token"], {**none, "empty_row_share": 0.02})


def test_a_tail_bucket_is_proposed_where_the_target_drops_its_rest():
    """The tail remedy changes only the target's rule, which the weights do not show: it is said for a
    dropped or renormalized rest (DistillKit none, TRL's server path without loss_add_tail), in the
    trainer's own words, and not where the run already keeps a tail."""
    cat = causes.catalogue("lm_causes.toml")

    def said(conv):
        run = {"student": "hf:s", "vocab": 1024, "convention": conv.to_dict(1024), "num_classes": 1024}
        ctx = causes.remedy_context([], run)
        mech = cat["alpha_imbalance"]["mechanisms"]
        return [
            r["say"] + "\n" + r["code"]
            for m in mech
            for r in causes.render_remedies(cat["alpha_imbalance"], m, ctx)
        ]

    kit = replace(LM_CONVENTIONS["distillkit"], top_k_rule="none")
    assert any("missing_probability_handling: symmetric_uniform" in r for r in said(kit))
    server = resolve(preset="trl-server-distill", task="causal-lm", top_k_rule="renormalize")
    tail = [r for r in said(server) if "one tail bucket" in r]
    assert tail and "loss_add_tail=True instead of your" in tail[0] and "loss_add_tail=True)" in tail[0]
    assert not any("top-k large enough" in r for r in said(server))  # TRL allows no k > 1 with beta > 0
    for keeps in (
        replace(LM_CONVENTIONS["distillkit"], top_k_rule="tail"),
        resolve(preset="trl-server-distill", task="causal-lm"),
    ):
        assert not any("one tail bucket" in r for r in said(keeps))


def test_a_fingerprint_that_cannot_tell_two_members_apart_shows_both():
    """A vocabulary-mean KD term and no KD term at all read as still (a KD term 2048x too weak is almost
    none): the remedy writes both losses beside the stated one, and the cause names both."""
    conv = LM_CONVENTIONS["kd-per-token"]
    ce_only, mean = (
        replace(conv, ce_weight=1.0, kd_weight=0.0, form="weights"),
        replace(conv, reduction="mean"),
    )
    fp = {
        "named": 1.0,
        "named_member": "no KD term (CE alone)",
        "best_member": "no KD term (CE alone) (or, as still, the KL reduced by 'mean')",
        "best_code": ce_only.code(),
        "named_ties": ["the KL reduced by 'mean'"],
        "named_ties_code": [mean.code()],
    }
    run = {"student": "hf:s", "vocab": 1024, "convention": conv.to_dict(1024), "num_classes": 1024}
    ctx = causes.remedy_context([{"id": "objective_fingerprint", "status": "fail", "evidence": fp}], run)
    assert "the KL reduced by 'mean'" in ctx["fp_say"] and "CE alone" in ctx["fp_say"]
    code = ctx["fp_code"]
    assert ce_only.code() in code and mean.code() in code and code.endswith(conv.code())
    assert "# or, as still (the fingerprint cannot tell them apart), the KL reduced by 'mean':" in code
    compile(code, "fp", "exec")
