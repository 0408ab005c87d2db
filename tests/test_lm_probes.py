"""The token-level fine-tuning probes on inputs whose answer is known by construction."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kddoctor.checks.base import Status
from kddoctor.checks.lm_probes import (
    lm_alpha_sensitivity as lm_alpha,
)
from kddoctor.checks.lm_probes import (
    lm_capacity_probe as lm_capacity,
)
from kddoctor.checks.lm_probes import (
    stated_objective,
    token_objective,
)
from kddoctor.convention import KDConvention
from kddoctor.lm import probes
from kddoctor.lm.evaluation import LMEvaluation
from kddoctor.lm.probes import Probes
from kddoctor.lm.rows import PRIME, RowSample
from kddoctor.metrics.tokens import IGNORE
from kddoctor.zoo.tiny_lm import TinyGPT


def _rows(n=12, length=16, vocab=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, -4:] = 0  # every third row padded at its end
    return ids, mask.bool(), ids.masked_fill(mask == 0, IGNORE)


def _lm(conv: KDConvention, **kw) -> KDConvention:
    return replace(conv, task="causal-lm", **kw)


def test_objective_is_the_per_token_kd_loss_written_out():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    target = torch.randint(0, 7, (2, 5), generator=g)
    target[0, :2] = IGNORE
    counted = target != IGNORE
    ce = F.cross_entropy(s[counted], target[counted])
    lt, ls = F.log_softmax(t / 2, -1), F.log_softmax(s / 2, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)[counted].mean()
    want = 0.3 * ce + 0.7 * 4 * kl
    assert float(token_objective(0.7, 2.0).token_loss(s, t, target)) == pytest.approx(float(want), rel=1e-5)
    # a top-1 target keeps the argmax only: KL = -log p_s(argmax t)
    top1 = _lm(token_objective(1.0, 1.0, t2=False), top_k=1).token_loss(s, t, target)
    want1 = -F.log_softmax(s, -1).gather(-1, t.argmax(-1, keepdim=True)).squeeze(-1)[counted].mean()
    assert float(top1) == pytest.approx(float(want1), rel=1e-5)


def test_stated_objective_carries_the_reduction_t2_and_top_k():
    splits = {"train": {"vocab": 32, "facts": {"tokens_per_sequence": 40.0}}}
    conv = _lm(
        KDConvention.from_alpha(0.3, temperature=2.0), reduction="batchmean", top_k=5, kd_dtype="bfloat16"
    )
    obj = stated_objective(LMEvaluation(splits, conv))
    assert (obj.ce_weight, obj.kd_weight, obj.top_k, obj.kd_dtype) == (
        pytest.approx(0.7),
        pytest.approx(0.3),
        5,
        "bfloat16",
    )
    assert obj.reduction_scale(32) == pytest.approx(40.0)  # 'batchmean' sums the 40 tokens of a sequence
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    target = torch.randint(0, 32, (2, 5), generator=g)
    per_token = _lm(obj, reduction="token", ce_weight=0.0, kd_weight=1.0, form="weights")
    batchmean = _lm(obj, ce_weight=0.0, kd_weight=1.0, form="weights")
    assert float(batchmean.token_loss(s, t, target)) == pytest.approx(
        40 * float(per_token.token_loss(s, t, target))
    )
    no_t2 = stated_objective(
        LMEvaluation(splits, _lm(KDConvention.from_alpha(0.3, temperature=2.0, t2=False)))
    )
    assert no_t2.effective(32)["t2_factor"] == pytest.approx(1 / 4)


def _sample(batches, size=8, tokens=8):
    rows = RowSample(size, tokens, seed=3)
    for b in batches:
        rows.add(b["input_ids"], b["attention_mask"], b["labels"])
    return rows.tensors()


def test_the_row_sample_cuts_pads_and_skips_rows_without_counted_tokens():
    a = _rows(n=4, length=10)
    b_ids, b_mask, b_labels = _rows(n=4, length=6, seed=1)
    b_labels[1:] = IGNORE  # three rows count nothing: never kept
    batches = [
        {"input_ids": a[0], "attention_mask": a[1], "labels": a[2]},
        {"input_ids": b_ids, "attention_mask": b_mask, "labels": b_labels},
    ]
    ids, mask, labels = _sample(batches)
    assert ids.shape == (5, 8)  # 4 + 1 rows, cut to 8 positions
    assert {tuple(r) for r in ids.tolist()} == {tuple(r) for r in a[0][:, :8].tolist()} | {
        tuple(b_ids[0].tolist() + [0, 0])
    }
    six = next(i for i, r in enumerate(ids.tolist()) if r[:6] == b_ids[0].tolist())
    assert not mask[six, 6:].any() and (labels[six, 6:] == IGNORE).all()  # the 6-token row padded


def test_the_row_sample_does_not_favour_rows_of_small_token_ids():
    # half the rows drawn from the smallest ids (whitespace bytes, a BPE's first merges), half from the
    # largest: an unbiased sample keeps about as many of each (a key growing with the ids kept only the first)
    g = torch.Generator().manual_seed(0)
    low, high = torch.randint(0, 40, (200, 16), generator=g), torch.randint(200, 256, (200, 16), generator=g)
    ids = torch.cat([low, high])
    rows = RowSample(100, 16, seed=3)
    rows.add(ids, torch.ones_like(ids), ids.clone())
    kept = rows.tensors()[0]
    share_low = float((kept.float().mean(1) < 100).float().mean())
    assert 0.35 < share_low < 0.65


def test_the_row_hash_is_exact_for_vocabularies_of_any_size():
    # ids near 2^31 (no real vocabulary, but no sum may wrap): the keys lie in [0, prime) and the sample
    # is the same whichever order the rows arrive in
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2**30, 2**31, (64, 512), generator=g)
    a, b = RowSample(8, 512, seed=5), RowSample(8, 512, seed=5)
    a.add(ids, torch.ones_like(ids), ids.clone())
    b.add(ids.flip(0), torch.ones_like(ids), ids.flip(0).clone())
    assert bool((a.keys >= 0).all()) and bool((a.keys < PRIME).all())
    assert sorted(map(tuple, a.tensors()[0].tolist())) == sorted(map(tuple, b.tensors()[0].tolist()))


def test_the_row_sample_does_not_depend_on_the_loader_order():
    ids, mask, labels = _rows(n=40, length=12)
    lengths = mask.sum(1)
    batches = [
        {"input_ids": i, "attention_mask": m, "labels": x} for i, m, x in zip(ids, mask, labels, strict=True)
    ]
    by_length = sorted(batches, key=lambda b: int(b["attention_mask"].sum()))  # a length-sorted loader
    as_is, sorted_ = (
        _sample([{k: v[None] for k, v in b.items()} for b in bs], size=10, tokens=12)
        for bs in (batches, by_length)
    )
    key = lambda t: sorted(map(tuple, t[0].tolist()))  # noqa: E731
    assert key(as_is) == key(sorted_) and len(as_is[0]) == 10
    assert lengths.min() < 12  # the sample really mixes lengths it could have been biased on


def test_cached_and_recomputed_teacher_targets_agree(monkeypatch):
    torch.manual_seed(0)
    teacher, student = TinyGPT(width=16, layers=1, heads=2), TinyGPT(width=8, layers=1, heads=2)
    rows = _rows(vocab=256)
    cpu = torch.device("cpu")
    cached = Probes(teacher, student, rows, rows, vocab=256, device=cpu)
    monkeypatch.setattr(probes, "TEACHER_CACHE_ELEMS", 0)
    fresh = Probes(teacher, student, rows, rows, vocab=256, device=cpu)
    assert fresh.cache["train"] is None and cached.cache["train"] is not None
    assert cached.score(student, "val") == pytest.approx(fresh.score(student, "val"))
    a = cached.finetune(token_objective(1.0, 1.0, t2=False), steps=3, budget_s=None)
    b = fresh.finetune(token_objective(1.0, 1.0, t2=False), steps=3, budget_s=None)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.parametrize("max_elems", [256 * 5, 256 * 40, 256 * 10_000])
def test_counted_logits_are_the_first_counted_tokens_read_a_few_rows_at_a_time(max_elems):
    """The calibration fit's logits: the first counted tokens of the rows in order, as a forward of every
    row at once would select them, however many the budget takes (a part of one batch of rows, several
    batches, every token)."""
    torch.manual_seed(0)
    teacher, student = TinyGPT(width=16, layers=1, heads=2), TinyGPT(width=8, layers=1, heads=2)
    rows = _rows(n=20, vocab=256)
    pr = Probes(teacher, student, rows, rows, vocab=256, device=torch.device("cpu"))
    got = pr.counted_logits("val", max_elems)
    ids, mask, labels = rows
    counted = labels[:, 1:] != IGNORE
    take = max_elems // 256
    with torch.no_grad():
        for name, model in (("student", student), ("teacher", teacher)):
            whole = model(input_ids=ids, attention_mask=mask)[:, :-1].float()[counted][:take]
            assert torch.allclose(got[name], whole, atol=1e-5), name
    assert torch.equal(got["target"], labels[:, 1:][counted][:take])
    assert len(got["target"]) == min(take, int(counted.sum()))


def test_finetuning_leaves_the_student_alone_and_a_copy_of_the_teacher_scores_perfectly():
    torch.manual_seed(0)
    teacher = TinyGPT(width=16, layers=1, heads=2)
    student = TinyGPT(width=16, layers=1, heads=2)
    before = copy.deepcopy(student.state_dict())
    rows = _rows(vocab=256)
    pr = Probes(teacher, student, rows, rows, vocab=256, device=torch.device("cpu"))
    pr.finetune(token_objective(0.5, 2.0), steps=4, budget_s=None)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    same = pr.score(teacher, "val")
    assert same["agreement"] == pytest.approx(1.0) and same["kl"] == pytest.approx(0.0, abs=1e-6)


def _probe_ev(teacher, student, **kw):
    """An evaluation of the pair on the same 16 rows as train and val: the main pass's metrics, facts
    and text statistics, and the probes on those rows."""
    from kddoctor.lm.engine import evaluate_lm

    rows = _rows(n=16, length=24, vocab=256)
    pr = Probes(teacher, student, rows, rows, vocab=256, device=torch.device("cpu"))
    batch = [{"input_ids": rows[0], "attention_mask": rows[1].long(), "labels": rows[2]}]
    splits = {s: evaluate_lm(teacher, student, batch, name=s) for s in ("train", "val")}
    conv = _lm(KDConvention.from_alpha(0.5, temperature=2.0), reduction="token")
    return LMEvaluation(splits, conv, probes=pr, **kw)


def test_capacity_probe_tells_a_copy_of_the_teacher_from_a_tiny_student():
    torch.manual_seed(0)
    teacher = TinyGPT(width=32, layers=1, heads=2)
    copied = _probe_ev(teacher, copy.deepcopy(teacher), fit_steps=80)
    tiny = _probe_ev(teacher, TinyGPT(width=2, layers=1, heads=1), fit_steps=80)
    fc, ft = lm_capacity(copied), lm_capacity(tiny)
    # the copy misses none of its teacher's gain over a unigram model on its train text; the tiny one
    # misses all of it, and pure-KD fine-tuning barely moves it
    assert fc.evidence["train_gap_share"] == pytest.approx(0.0, abs=1e-6) and fc.status is Status.PASS
    assert ft.evidence["train_gap_share"] > 0.9 and ft.status is Status.FAIL
    assert fc.evidence["fit_closed_fraction"] == 1.0 and ft.evidence["fit_closed_fraction"] < 0.1
    assert set(fc.evidence["fit_trials"]) == {f"{lr:g}" for lr in probes.LRS}
    assert copied.probes.lr == fc.evidence["fit_lr"]  # the sweep then runs at the fit's step size


def test_alpha_sweep_reports_both_curves_and_the_continue_gain():
    torch.manual_seed(0)
    ev = _probe_ev(TinyGPT(width=16, layers=1, heads=2), TinyGPT(width=8, layers=1, heads=2), sweep_steps=3)
    f = lm_alpha(ev)
    assert [p["alpha"] for p in f.details["alpha_curve"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [p["temperature"] for p in f.details["temperature_curve"]] == [1.0, 2.0, 4.0]
    e = f.evidence
    said = "the best per-token setting (alpha" if e["gain_agreement"] >= 0.01 else "no per-token setting of"
    assert said in f.summary  # a forward-KL user's own objective; a gain under a point is said as none
    assert e["gain_agreement"] == pytest.approx(
        max(p["agreement"] for p in f.details["alpha_curve"] + f.details["temperature_curve"])
        - e["continue_val"]["agreement"]
    )
    assert e["continue_gain_agreement"] == pytest.approx(
        e["continue_val"]["agreement"] - e["checkpoint_val"]["agreement"]
    )


def test_a_reverse_kl_student_is_read_in_its_own_divergence_under_its_own_key():
    # a reverse-KL objective does not target the teacher's argmax or KL(t||s): its continue gain is read
    # in reverse KL and filed apart (its ramp differs), and the agreement gain is shown but unread
    torch.manual_seed(0)
    ev = _probe_ev(TinyGPT(width=16, layers=1, heads=2), TinyGPT(width=8, layers=1, heads=2), sweep_steps=2)
    ev.convention = replace(ev.convention, divergence="reverse_kl")
    f = lm_alpha(ev)
    e = f.evidence
    assert "per-token forward-KL setting" in f.summary  # the sweep's objective, not the stated one
    start, base = e["checkpoint_val"], e["continue_val"]
    assert "continue_gain_kl_rel" not in e and "continue_gain_agreement" not in e
    assert e["continue_gain_div_rel"] == pytest.approx(1 - base["div"] / start["div"])
    assert e["continue_reads"] == "the stated reverse KL"
    assert e["continue_gain_agreement_unread"] == pytest.approx(base["agreement"] - start["agreement"])


def test_the_sweeps_best_setting_is_said_in_the_trainers_words_too():
    from kddoctor.flags import resolve

    torch.manual_seed(0)
    ev = _probe_ev(TinyGPT(width=16, layers=1, heads=2), TinyGPT(width=8, layers=1, heads=2), sweep_steps=2)
    ev.convention = resolve(preset="distillkit", task="causal-lm", ce_weight=0.5, kd_weight=0.5)
    f = lm_alpha(ev)
    best = f.evidence["best"]
    words = ev.convention.to_user(best["alpha"], best["temperature"], ev.vocab).setting()
    assert f"on KD, T {best['temperature']:g}: {words}" in f.summary and "kl weight=" in words


def test_probes_are_skipped_without_rows():
    from kddoctor.checks.base import get_check, run_check

    splits = {s: {"vocab": 8, "facts": {"tokens_per_sequence": 4.0}} for s in ("train", "val")}
    ev = LMEvaluation(splits, _lm(KDConvention(), reduction="token"))
    for cid in ("capacity_probe", "alpha_sensitivity"):
        f = run_check(get_check(cid, "causal-lm"), ev)
        assert f.status is Status.SKIPPED and "counts a token" in f.summary


def test_a_time_budget_stops_the_fit_probe_and_says_so():
    torch.manual_seed(0)
    teacher = TinyGPT(width=16, layers=1, heads=2)
    ev = _probe_ev(teacher, TinyGPT(width=8, layers=1, heads=2), fit_steps=40, probe_budget=1e-9)
    f = lm_capacity(ev)
    assert f.evidence["fit_stopped_by"] == "time" and f.evidence["fit_steps_done"] == 1
    assert f.evidence["fit_steps_share"] == pytest.approx(1 / 40)
    assert "stopped by its time budget" in f.summary


def test_a_time_budget_stops_the_first_continue_run_and_the_others_run_as_many_steps():
    torch.manual_seed(0)
    teacher, small = TinyGPT(width=16, layers=1, heads=2), dict(width=8, layers=1, heads=2)
    f = lm_alpha(_probe_ev(teacher, TinyGPT(**small), fit_steps=40, sweep_steps=2, probe_budget=1e-9))
    runs = f.evidence["continue_runs"]
    assert f.evidence["continue_stopped_by"] == "time" and f.evidence["continue_steps"] == 1
    assert [r["steps"] for r in runs.values()] == [1] * len(probes.CONTINUE_LRS)
    assert {r["stopped_by"] for r in runs.values()} == {"time"}
    assert "1 steps (stopped by its time budget)" in f.summary
    unbounded = lm_alpha(_probe_ev(teacher, TinyGPT(**small), fit_steps=3, sweep_steps=2))
    assert unbounded.evidence["continue_stopped_by"] == "steps" and unbounded.evidence["continue_steps"] == 3
    assert "stopped by its time budget" not in unbounded.summary


def _capacity_rows(steps_share: float) -> list[dict]:
    gap = {"val_acc_gap": 0.15, "val_acc_gap_z": 8.0, "excess_agreement_gap": 0.0}
    cap = {
        "capacity_gap_share": 0.9,
        "capacity_gap_reads": "",
        "param_ratio": 0.01,
        "fit_steps_share": steps_share,
    }
    return [
        {"id": "generalization_gap", "status": "warn", "evidence": gap},
        {"id": "capacity_probe", "status": "fail", "evidence": cap},
        {"id": "alpha_sensitivity", "status": "pass", "evidence": {"continue_gain_agreement": -0.05}},
    ]


def test_a_student_that_cannot_fit_is_too_small_unless_the_probe_ran_out_of_time():
    from kddoctor.causes import rank

    def capacity(share):
        causes = rank(_capacity_rows(share), name="lm_causes.toml")
        return next(c for c in causes if c["id"] == "insufficient_capacity")

    full, starved = capacity(1.0), capacity(0.2)
    assert full["score"] >= 0.5 and full["id"] == "insufficient_capacity"
    assert starved["score"] < 0.5 and starved["against"] > 0.5


def test_a_student_the_stated_objective_still_moves_is_flagged_not_passed():
    # the status says what the continue gain says: a student that more steps of its own objective still
    # move (here an untrained one) had not converged, whatever the sweep found
    torch.manual_seed(0)
    ev = _probe_ev(TinyGPT(width=16, layers=1, heads=2), TinyGPT(width=8, layers=1, heads=2), sweep_steps=3)
    f = lm_alpha(ev)
    moved = f.evidence["continue_gain_kl_rel"]
    assert moved > 0.05 and f.status is not Status.PASS and "it had not converged" in f.summary
    calm = lm_alpha(ev, continue_warn=moved + 1, gain_warn=1.0, gain_fail=2.0)
    assert calm.evidence["continue_gain_kl_rel"] == pytest.approx(moved)
    assert calm.status is Status.PASS and "converged" not in calm.summary


def test_a_teacher_with_no_gain_over_token_frequencies_gets_no_share_in_words():
    # an untrained teacher predicts random tokens worse than their frequencies do: the share of its gain
    # a student misses is a ratio over (next to) nothing, so the sentence says so instead of a number
    torch.manual_seed(0)
    f = lm_capacity(
        _probe_ev(TinyGPT(width=32, layers=1, heads=2), TinyGPT(width=2, layers=1, heads=1), fit_steps=4)
    )
    assert abs(f.evidence["train_gap_share"]) > 10
    assert (
        "its teacher does no better than a unigram model" in f.summary
        and "%" not in f.summary.split(";")[0][:80]
    )


@pytest.mark.parametrize(
    "params,widths,small",
    [
        ((100, 1000), (24, 128), False),  # 1/10 of the parameters, 3/16 of the width
        ((100, 1000), (32, 128), False),  # 1/10 and 1/4: as healthy references go
        ((100, 2900), (32, 128), False),  # 1/29 and 1/4
        ((100, 3100), (32, 128), True),  # under 1/30 of the parameters
        ((100, 2900), (16, 128), True),  # 1/29, under 1/6 of the width: the tuning draw's mild dose
        ((100, 2900), None, False),  # no widths tapped: the parameters alone
    ],
)
def test_a_small_student_is_read_by_its_parameters_or_its_width(params, widths, small):
    from types import SimpleNamespace

    import numpy as np

    from kddoctor.checks.lm_probes import _sizes

    models = [torch.nn.Linear(n, 1, bias=False) for n in params]
    feats = (
        {}
        if widths is None
        else {m: np.zeros((2, w)) for m, w in zip(("student", "teacher"), widths, strict=True)}
    )
    ev = SimpleNamespace(
        probes=SimpleNamespace(student=models[0], teacher=models[1]), val={"features": feats}
    )
    e = _sizes(ev, 0.48)
    assert e["small_student_shortfall"] == (0.48 if small else 0.0)
    said = f"1/{params[1] // params[0]} of its teacher's parameters"
    assert e["size_words"] == (
        said if widths is None else f"{said} and 1/{128 // widths[0]} of its width ({widths[0]} of 128)"
    )


class _DropoutTeacher(torch.nn.Module):
    """A teacher whose train mode drops some of its logits (as dropout inside a transformer would)."""

    def __init__(self, inner, p):
        super().__init__()
        self.inner, self.drop = inner, torch.nn.Dropout(p)

    def forward(self, input_ids, attention_mask=None):
        return self.drop(self.inner(input_ids=input_ids, attention_mask=attention_mask))


def test_a_teacher_left_in_train_mode_is_measured_against_its_eval_mode_self():
    from kddoctor.checks.lm_pipeline import lm_mode_parity

    torch.manual_seed(0)
    inner, student = TinyGPT(width=16, layers=1, heads=2), TinyGPT(width=8, layers=1, heads=2)
    quiet = lm_mode_parity(_probe_ev(_DropoutTeacher(inner, 0.0).eval(), student))
    assert quiet.status is Status.PASS and "no dropout" in quiet.summary
    assert quiet.evidence["teacher_train_mode_kl"] == pytest.approx(0.0, abs=1e-6)
    teacher = _DropoutTeacher(inner, 0.3).eval()
    ev = _probe_ev(teacher, student)
    f, again = lm_mode_parity(ev), lm_mode_parity(ev)
    e = f.evidence
    assert f.status is Status.WARN and e["teacher_train_mode_disagreement"] > 0.05, f.summary
    assert e["teacher_train_mode_kl"] > 0 and e == again.evidence  # seeded: the same dropout draw
    assert e["student_closer_to_train_mode"] == pytest.approx(
        e["student_kl_to_eval_teacher"] - e["student_kl_to_train_teacher"]
    )
    assert not teacher.training  # left as it was found
    assert e["student_kl_to_eval_teacher"] == pytest.approx(
        lm_mode_parity(ev).evidence["student_kl_to_eval_teacher"]
    )
