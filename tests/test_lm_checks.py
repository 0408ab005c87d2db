"""The causal-LM facts and checks on inputs whose answer is known by construction."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kddoctor.checks.base import Status, all_checks
from kddoctor.checks.lm_inputs import lm_mask_parity, lm_vocab_parity
from kddoctor.checks.lm_loss import lm_precision, lm_reduction, lm_topk
from kddoctor.convention import KDConvention
from kddoctor.errors import UserError
from kddoctor.flags import resolve
from kddoctor.lm.evaluation import LMEvaluation
from kddoctor.lm.facts import LMFacts, RowFacts
from kddoctor.losses import token_kl
from kddoctor.metrics.tokens import IGNORE


def _batch(b=4, length=10, vocab=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, length, vocab, generator=g) * 2
    s = t + torch.randn(b, length, vocab, generator=g) * 0.5
    ids = torch.randint(1, vocab, (b, length), generator=g)
    return t, s, ids


def test_facts_count_masks_and_kept_mass_exactly():
    t, s, ids = _batch()
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # 4 padded positions in row 0
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[:, :3] = IGNORE  # a 3-token prompt everywhere
    f = LMFacts(pad_id=0)
    f.update(t, s, ids, mask, labels, shared=12)
    out = f.compute()
    target = labels[:, 1:] != IGNORE  # positions 1..9 predict tokens 2..10 (shifted)
    assert out["tokens_per_sequence"] == pytest.approx(target.sum().item() / 4)
    assert out["pad_fraction"] == pytest.approx(1 - mask[:, 1:].sum().item() / mask[:, 1:].numel())
    rows = t[:, :-1][target]
    kept = F.softmax(rows, -1).topk(3, -1).values.sum(-1).mean().item()
    row_facts = RowFacts(replace(KDConvention(task="causal-lm", reduction="token"), top_k=3))
    row_facts.kept(rows)
    assert row_facts.compute()["teacher_kept_mass"][3] == pytest.approx(kept, rel=1e-5)
    assert out["teacher_pad_mass"] == pytest.approx(F.softmax(rows, -1)[:, 0].mean().item(), rel=1e-5)


def test_facts_measure_the_weight_a_row_by_row_mean_moves_between_rows():
    t, s, ids = _batch(b=3, length=11)
    labels = ids.clone()
    f = LMFacts()
    f.update(t, s, ids, torch.ones_like(ids), labels, shared=12)
    assert f.compute()["row_weight_shift"] == 0.0  # every row counts 10 tokens: nothing moves
    labels[0, :9] = IGNORE  # row 0 counts 2 tokens, row 2 all 10: N = 12 tokens, R = 2 rows
    labels[1, :] = IGNORE  # a row that counts nothing is no row of the mean
    f = LMFacts()
    f.update(t, s, ids, torch.ones_like(ids), labels, shared=12)
    out = f.compute()
    # 1/2 (|1/2 - 2/12| + |1/2 - 10/12|): row 0 (2 tokens) and row 2 (10 tokens) of the 2 that count
    assert out["row_weight_shift"] == pytest.approx(0.5 * (abs(1 / 2 - 2 / 12) + abs(1 / 2 - 10 / 12)))
    assert (out["row_tokens_min"], out["row_tokens_max"]) == (2, 10)
    said = lm_mask_parity(_ev(train={"row_weight_shift": 0.33, "row_tokens_min": 2, "row_tokens_max": 10}))
    assert said.status is Status.PASS and "33% of the loss's weight" in said.summary  # exposure, no fault
    assert said.evidence["row_weight_shift"] == 0.33
    assert "num_items_in_batch" not in lm_mask_parity(_ev(train={"row_weight_shift": 0.1})).summary


def test_a_row_by_row_mean_weighs_short_rows_tokens_more():
    from kddoctor.losses import row_mean_terms

    conv = KDConvention(task="causal-lm", reduction="token", ce_weight=0.5, kd_weight=0.5)
    t, s, ids = _batch(b=2, length=8)
    y = ids.clone()
    ce_tok = F.cross_entropy(s.transpose(1, 2), y, reduction="none")
    kd_tok = token_kl(s, t, conv.temperature)
    same = row_mean_terms(conv, s, t, y)  # rows of one length: the per-token means
    assert same[0] == pytest.approx(ce_tok.mean().item(), rel=1e-5)
    assert same[1] == pytest.approx(kd_tok.mean().item(), rel=1e-5)
    y[0, :6] = IGNORE  # row 0 counts 2 tokens, row 1 all 8
    ce, kd = row_mean_terms(conv, s, t, y)
    assert ce == pytest.approx(((ce_tok[0, 6:].mean() + ce_tok[1].mean()) / 2).item(), rel=1e-5)
    assert kd == pytest.approx(((kd_tok[0, 6:].mean() + kd_tok[1].mean()) / 2).item(), rel=1e-5)


def test_facts_measure_mass_in_rows_a_truncation_drops():
    t, s, ids = _batch(vocab=12)
    mask, labels = torch.ones_like(ids), ids.clone()
    f = LMFacts()
    f.update(t, s, ids, mask, labels, shared=10)
    dropped = F.softmax(t[:, :-1].reshape(-1, 12), -1)[:, 10:].sum(-1).mean().item()
    assert f.compute()["teacher_dropped_mass"] == pytest.approx(dropped, rel=1e-5)


def test_low_precision_kl_reads_zero_where_fp32_does_not():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(512, 1000, generator=g) * 3
    s = t + 1e-3 * torch.randn(512, 1000, generator=g)  # nearly identical: fp32 KL ~5e-7
    ref = token_kl(s, t, 1.0, torch.float32)
    low = token_kl(s, t, 1.0, torch.bfloat16).float()
    assert ref.median() > 1e-7
    assert ((low <= 0) | ((low - ref).abs() > ref)).float().mean() > 0.5  # bf16 cannot resolve it


def _ev(**facts_over):
    base = {
        "sequences": 10,
        "counted_fraction": 1.0,
        "counted_of_attended": 1.0,
        "pad_fraction": 0.0,
        "prompt_fraction": 0.0,
        "tokens_per_sequence": 50.0,
        "pad_id": None,
        "teacher_pad_mass": None,
        "student_pad_mass": None,
        "teacher_dropped_mass": 0.0,
        "student_dropped_mass": 0.0,
        "teacher_kept_mass": {1: 0.5, 2: 0.7, 5: 0.9, 20: 0.99},
        "empty_row_share": 0.0,
        "masked_rows": 0,
        "empty_batches": 0,
        "batches": 2,
        "precision": {
            "dtype": "float32",
            "temperature": 1.0,
            "tokens": 100,
            "kl_fp32": 0.1,
            "kl_dtype": 0.1,
            "zero_fraction": 0.0,
            "nonfinite_fraction": 0.0,
        },
    }
    split = {
        "tokens": 500,
        "vocab": 100,
        "teacher_vocab": 100,
        "student_vocab": 100,
        "agreement": 0.6,
        "kl": 0.3,
        "teacher": {"loss": 2.0, "acc": 0.5, "entropy": 2.0},
        "student": {"loss": 2.2, "acc": 0.45, "entropy": 2.1},
    }
    train = {**split, "facts": {**base, **facts_over.pop("train", {})}}
    val = {**split, "facts": {**base, **facts_over.pop("val", {})}}
    loss = {k: facts_over.pop(k) for k in ("reduction", "top_k", "kd_dtype") if k in facts_over}
    conv = resolve(alpha=0.5, temperature=1.0, task="causal-lm", **loss)
    return LMEvaluation({"train": train, "val": val}, conv, **facts_over)


def test_batchmean_over_tokens_multiplies_the_kd_term_by_the_length():
    conv = lambda r: _ev(reduction=r).convention  # noqa: E731
    assert conv("batchmean").reduction_scale(100) == 50.0  # the measured 50 tokens per sequence
    assert conv("mean").reduction_scale(100) == pytest.approx(0.01)
    assert conv("token").reduction_scale(100) == 1.0
    f = lm_reduction(_ev(reduction="batchmean"))
    assert f.status is Status.FAIL and f.evidence["kd_share_effective"] == pytest.approx(50 / 51)
    assert lm_reduction(_ev()).status is Status.PASS


def test_mask_parity_flags_a_val_collator_that_counts_the_prompt_and_a_student_that_predicts_padding():
    assert lm_mask_parity(_ev(train={"counted_of_attended": 0.7})).status is Status.FAIL
    f = lm_mask_parity(_ev(val={"pad_id": 0, "teacher_pad_mass": 1e-5, "student_pad_mass": 0.02}))
    assert f.status is Status.FAIL and f.evidence["student_pad_excess"] == pytest.approx(0.02 - 1e-5)
    assert lm_mask_parity(_ev()).status is Status.PASS


def test_vocab_parity_compares_tokenizers_and_catches_a_teacher_that_reads_other_ids():
    tok = {"size": 100, "special_ids": {"pad": 0}, "hash": "a", "chat_template_hash": None}
    same = lm_vocab_parity(_ev(tokenizers={"teacher": tok, "student": dict(tok)}))
    assert same.status is Status.PASS and same.evidence["tokenizer_differs"] == 0
    other = lm_vocab_parity(_ev(tokenizers={"teacher": tok, "student": {**tok, "hash": "b"}}))
    assert other.status is Status.FAIL and other.evidence["tokenizer_differs"] == 1
    ev = _ev()
    ev.splits["val"]["teacher"] = {"loss": 3.0, "acc": 0.3, "entropy": 2.0}  # worse than its student
    assert lm_vocab_parity(ev).status is Status.FAIL


def test_topk_is_skipped_unless_stated_and_grades_the_dropped_mass():
    from kddoctor.checks.base import get_check, run_check

    assert run_check(get_check("lm_topk", "causal-lm"), _ev()).status is Status.SKIPPED
    f = lm_topk(_ev(top_k=2))
    assert f.status is Status.FAIL and f.evidence["dropped_target_mass"] == pytest.approx(0.3)
    assert lm_topk(_ev(top_k=20)).status is Status.PASS


def test_precision_grades_the_stated_dtype():
    assert lm_precision(_ev()).status is Status.PASS
    assert "(KL 0.1000 nats/token" in lm_precision(_ev()).summary
    jsd = _ev(val={"precision": {**_ev().splits["val"]["facts"]["precision"], "divergence": "jsd"}})
    assert "(JSD 0.1000 nats/token" in lm_precision(jsd).summary  # the stated divergence, by its name
    prec = {"dtype": "bfloat16", "kl_dtype": 0.1, "zero_fraction": 0.2}
    f = lm_precision(_ev(val={"precision": {**_ev().splits["val"]["facts"]["precision"], **prec}}))
    assert f.status is Status.FAIL


def test_every_lm_check_records_its_thresholds():
    for spec in all_checks("causal-lm"):
        assert spec.thresholds and all(isinstance(v, float) and math.isfinite(v) for _, v in spec.thresholds)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"reduction": "perseq"}, "--kd-reduction for causal LMs must be one of"),
        ({"kd_dtype": "int8"}, "--kd-dtype must be one of"),
        ({"top_k": 0}, "--teacher-top-k must be a positive integer"),
        ({"reduction": "sum"}, "--train-batch-size"),
    ],
)
def test_bad_lm_loss_facts_are_refused(kw, words):
    args = {"reduction": "token", "top_k": None, "kd_dtype": "float32", "train_batch_size": None, **kw}
    with pytest.raises(UserError, match=words):
        resolve(task="causal-lm", **args)


def test_uniform_share_places_the_student_between_its_teacher_and_a_uniform_guess():
    from kddoctor.checks.lm_gap import _uniform_share

    v = 256
    m = lambda h_s: {"vocab": v, "teacher": {"entropy": 1.5}, "student": {"entropy": h_s}}  # noqa: E731
    assert _uniform_share(m(1.5)) == 0.0 and _uniform_share(m(1.0)) == 0.0  # as (or more) confident
    assert _uniform_share(m(math.log(v))) == pytest.approx(1.0)
    assert _uniform_share(m((1.5 + math.log(v)) / 2)) == pytest.approx(0.5)


def test_a_healthy_lm_verdict_names_the_checks_that_flag_something():
    from kddoctor.causes import verdict
    from kddoctor.tasks.causal_lm import CausalLMTask

    ev = _ev()
    causes = [{"id": "insufficient_capacity", "score": 0.12, "likely": False, "raw_score": 0.12}]
    rows = [
        {"id": "generalization_gap", "status": "pass", "evidence": {}},
        {"id": "capacity_probe", "status": "warn", "evidence": {}},
    ]
    calm = lambda gap: CausalLMTask().calm_sentence(ev, rows, causes, gap)  # noqa: E731
    v = verdict(rows, causes, "lm_causes.toml", calm)
    assert v["kind"] == "healthy" and "1 check flags something (capacity_probe)" in v["sentence"]
    assert "insufficient_capacity, 0.12" in v["sentence"] and "no check found a fault" not in v["sentence"]
    rows[1]["status"] = "pass"  # no check flags: a cause below the bar is still named, with its evidence
    causes[0]["evidence"] = ["on its own train text the student misses 40.0% of its teacher's gain"]
    said = verdict(rows, causes, "lm_causes.toml", calm)["sentence"]
    assert "no check flags a fault, and the strongest lead, insufficient_capacity (0.12)" in said
    assert said.endswith("KL(t||s) 0.300 nats/token on val") and "misses 40.0% of its teacher's gain" in said
    causes[0]["score"] = 0.0
    assert "no check found a fault" in verdict(rows, causes, "lm_causes.toml", calm)["sentence"]


def test_the_nll_gap_makes_no_verdict_for_an_objective_that_does_not_minimize_nll():
    from kddoctor.causes import verdict
    from kddoctor.checks.lm_gap import nll_unread
    from kddoctor.tasks.causal_lm import CausalLMTask

    assert nll_unread(resolve(alpha=0.5, temperature=1.0, task="causal-lm")) is None
    assert nll_unread(resolve(preset="minillm", task="causal-lm")) == (
        "reverse KL with 100% of its batches sampled by itself"
    )
    assert nll_unread(resolve(preset="trl-gkd", task="causal-lm")).startswith("JSD")
    ev = _ev()
    causes = [
        {
            "id": "optimization",
            "score": 0.1,
            "likely": False,
            "raw_score": 0.1,
            "title": "O",
            "mechanism_title": "m",
            "evidence": ["e"],
        }
    ]
    gap = {"val_gap_share": 0.9, "val_gap_share_z": 12.0, "val_acc_gap": 0.1, "val_acc_gap_z": 12.0}
    rows = [{"id": "generalization_gap", "status": "pass", "evidence": gap}]
    calm = lambda g: CausalLMTask().calm_sentence(ev, rows, causes, g)  # noqa: E731
    assert verdict(rows, causes, "lm_causes.toml", calm)["kind"] == "unexplained_gap"  # clearly behind
    rows[0]["evidence"] = {k: v for k, v in gap.items() if k != "val_gap_share_z"}  # as lm_gap leaves it
    assert verdict(rows, causes, "lm_causes.toml", calm)["kind"] == "healthy"


def test_a_student_that_tracks_its_teacher_has_no_likely_cause_whatever_its_teachers_own_drop():
    """The gap a cause explains is the student's: a teacher whose own token accuracy falls from train to
    val (as a language model's does) opens no cause's gate while the student tracks it."""
    from kddoctor.causes import rank, verdict

    gap = {
        "val_gap_share": 0.014,
        "val_gap_share_z": 1.5,
        "val_acc_gap": 0.0105,
        "val_acc_gap_z": 1.05,
        "excess_agreement_gap": -0.007,
        "excess_agreement_gap_z": -0.56,
        "teacher_val_drop": 0.044,
        "teacher_val_drop_z": 6.1,
    }
    fp = {"named": 1.0, "objective_excess": 0.5, "coord_all_moving": 0.7, "best_member": "CE alone"}
    rows = [
        {"id": "generalization_gap", "status": "pass", "evidence": gap},
        {"id": "objective_fingerprint", "status": "fail", "evidence": fp},
    ]
    ranked = rank(rows, {}, name="lm_causes.toml", context={"applies": set()})
    top = ranked[0]
    assert top["id"] == "alpha_imbalance" and top["raw_score"] >= 0.5 > top["score"]
    assert verdict(rows, ranked, "lm_causes.toml", lambda g: "calm")["kind"] == "healthy"
    gap.update(val_acc_gap=0.03, val_acc_gap_z=6.0)  # the student itself 3 points behind: the cause stands
    ranked = rank(rows, {}, name="lm_causes.toml", context={"applies": set()})
    calm = verdict(rows, ranked, "lm_causes.toml", lambda g: "calm")
    assert ranked[0]["likely"] and calm["kind"] == "likely"
