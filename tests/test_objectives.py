"""LM trainers' objectives: each divergence against its formula written out (scipy), TRL's beta endpoints,
the top-k missing-mass rules, and the presets stated back in the trainer's own words and code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, rel_entr, softmax

from kddoctor.errors import UserError
from kddoctor.flags import resolve
from kddoctor.losses import token_divergence


def _pair(seed: int = 0, n: int = 6, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 2, torch.randn(n, v, generator=g) * 2  # student, teacher


def _kl(p, q):
    return rel_entr(p, q).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_divergence_is_its_formula(temperature):
    s, t = _pair()
    p = softmax(t.double().numpy() / temperature, -1)
    q = softmax(s.double().numpy() / temperature, -1)
    b = 0.3
    m_jsd, m_sf, m_sr = b * p + (1 - b) * q, b * p + (1 - b) * q, (1 - b) * p + b * q
    want = {
        "forward_kl": _kl(p, q),
        "reverse_kl": _kl(q, p),
        "jsd": b * _kl(p, m_jsd) + (1 - b) * _kl(q, m_jsd),  # TRL: M = beta*p + (1-beta)*q
        "skew_forward_kl": _kl(p, m_sf),  # DistiLLM: M = alpha*p + (1-alpha)*q
        "skew_reverse_kl": _kl(q, m_sr),  # DistiLLM: M = (1-alpha)*p + alpha*q
        "tv": 0.5 * np.abs(p - q).sum(-1),
    }
    for kind, ref in want.items():
        got = token_divergence(s, t, temperature, "float32", None, kind, b).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6, err_msg=kind)


def test_trl_beta_endpoints_are_forward_and_reverse_kl_not_zero():
    """TRL PR 3043: with the mixture built right, beta 0 and 1 must be the two KLs, never 0."""
    s, t = _pair(1)
    forward = token_divergence(s, t, 1.0, kind="forward_kl")
    reverse = token_divergence(s, t, 1.0, kind="reverse_kl")
    torch.testing.assert_close(token_divergence(s, t, 1.0, kind="jsd", beta=0.0), forward)
    torch.testing.assert_close(token_divergence(s, t, 1.0, kind="jsd", beta=1.0), reverse)
    assert float(token_divergence(s, t, 1.0, kind="jsd", beta=0.5).min()) > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_missing_mass_rules(temperature):
    """Each rule at T as its trainer builds it. The tail follows DistillKit's get_target_logprobs: the
    captured top-k log-probabilities at T 1 and the mass they leave, each raised to 1/T as k + 1 classes
    (arcee-ai/DistillKit@a61c2e7 distillkit/lossfuncs/common.py:14-66), not a softmax of the full logits
    at T cut to the top k (whose tail would be the sum of every missing p^(1/T), far heavier at T 2)."""
    s, t = _pair(2, v=20)
    k, T = 5, temperature
    p1 = np.exp(log_softmax(t.double().numpy(), -1))  # the teacher at T 1, as a capture holds it
    lp = log_softmax(t.double().numpy() / T, -1)
    lq = log_softmax(s.double().numpy() / T, -1)
    top = np.argsort(-t.numpy(), -1)[:, :k]
    pk1 = np.take_along_axis(p1, top, -1)
    p_k = np.take_along_axis(np.exp(lp), top, -1)
    q_k = np.take_along_axis(np.exp(lq), top, -1)
    kept = (p_k * (np.log(p_k) - np.log(q_k))).sum(-1)
    z = (pk1 ** (1 / T)).sum(-1, keepdims=True) + (1 - pk1.sum(-1, keepdims=True)) ** (1 / T)
    bucket = pk1 ** (1 / T) / z  # DistillKit's target over the kept ids at T
    p_tail, q_tail = 1 - bucket.sum(-1), 1 - q_k.sum(-1)
    tail = (bucket * (np.log(bucket) - np.log(q_k))).sum(-1) + p_tail * np.log(p_tail / q_tail)
    renorm = pk1 ** (1 / T) / (pk1 ** (1 / T)).sum(-1, keepdims=True)
    want = {
        "none": kept,  # a truncated sum: no divergence, it can go negative
        "tail": tail,  # one bucket for the rest: the exact KL over k + 1 classes, >= 0
        "renormalize": (renorm * (np.log(renorm) - np.log(q_k))).sum(-1),  # DistillKit ZERO
    }
    for rule, ref in want.items():
        got = token_divergence(s, t, T, "float32", k, "forward_kl", rule=rule).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6, err_msg=rule)
    assert (want["tail"] >= -1e-9).all()
    if T == 1.0:  # every definition of the bucket agrees at T 1: the KL over k + 1 classes
        full_tail = (1 - p_k.sum(-1)) * np.log((1 - p_k.sum(-1)) / (1 - q_k.sum(-1)))
        np.testing.assert_allclose(want["tail"], kept + full_tail, rtol=1e-9)
    else:  # the full softmax's tail at T 2 is another target
        full_tail = (1 - p_k.sum(-1)) * np.log((1 - p_k.sum(-1)) / (1 - q_k.sum(-1)))
        assert np.abs(want["tail"] - (kept + full_tail)).max() > 0.01


def test_presets_speak_their_trainers_words():
    gkd = resolve(preset="trl-gkd", task="causal-lm", temperature=0.9)
    assert (gkd.divergence, gkd.beta, gkd.lmbda, gkd.temperature) == ("jsd", 0.5, 0.5, 1.0)
    assert gkd.sample_temperature == 0.9  # GKD's temperature samples; its loss runs at T 1
    assert gkd.setting() == "beta=0.5, lmbda=0.5, temperature=0.9"
    assert "GKDConfig(output_dir='out', beta=0.5, lmbda=0.5, temperature=0.9)" in gkd.code()
    kit = resolve(preset="distillkit", task="causal-lm", top_k=128, top_k_rule="symmetric_uniform")
    assert (kit.top_k_rule, kit.t2, kit.ce_weight, kit.kd_weight) == ("tail", True, 0.5, 0.5)
    assert "missing_probability_handling: symmetric_uniform" in kit.code()
    distillm = resolve(preset="distillm", task="causal-lm")
    assert distillm.code() == "python finetune.py --type sfkl --kd-ratio 1 --skew-alpha 0.1"
    for preset in ("trl-gkd", "trl-distill", "minillm"):
        conv = resolve(preset=preset, task="causal-lm")
        compile(conv.code(), preset, "exec")  # python presets write runnable python
    for kind in ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"):
        compile(resolve(alpha=0.5, task="causal-lm", divergence=kind).code(), kind, "exec")


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"preset": "trl-gkd", "alpha": 0.5, "task": "causal-lm"}, "one divergence term"),
        ({"preset": "trl-gkd"}, "add --task causal-lm"),
        ({"divergence": "jsd"}, "add --task causal-lm"),
        ({"divergence": "hellinger", "task": "causal-lm"}, "--divergence must be one of"),
        ({"beta": 1.5, "divergence": "jsd", "task": "causal-lm"}, "--beta must be in [0, 1]"),
        ({"top_k": 8, "divergence": "reverse_kl", "task": "causal-lm"}, "needs the teacher's full"),
        ({"top_k_rule": "clamp", "task": "causal-lm"}, "--top-k-rule must be one of"),
        # a trainer's objective stated twice, differently
        ({"preset": "minillm", "beta": 0.5, "task": "causal-lm"}, "not reverse_kl (--convention minillm)"),
        ({"preset": "minillm", "divergence": "forward_kl", "task": "causal-lm"}, "which computes reverse_kl"),
        (
            {"preset": "trl-gkd", "divergence": "reverse_kl", "task": "causal-lm"},
            "its --beta 0 is the forward",
        ),
        ({"preset": "minillm", "lmbda": 0.0, "task": "causal-lm"}, "trains on its own samples (lmbda 1)"),
        ({"beta": 0.5, "task": "causal-lm"}, "not forward_kl (the default)"),
    ],
)
def test_objective_flags_refused_in_one_line(kw, words):
    with pytest.raises(UserError, match=None) as e:
        resolve(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_trainer_whose_loss_runs_at_a_fixed_temperature_is_not_told_to_soften_it():
    from kddoctor.remedies import remedy_context

    for preset, soft in (("minillm", False), ("trl-gkd", False), ("distillkit", True)):
        conv = resolve(preset=preset, task="causal-lm")
        ctx = remedy_context([], {"convention": conv.to_dict(256), "num_classes": 256})
        assert ("higher_t" in ctx["applies"]) is soft, preset


@pytest.mark.parametrize(
    ("rule", "preset", "beta"),
    [
        ("renormalize", None, None),
        ("tail", None, None),
        ("none", None, None),
        ("tail", "trl-server-distill", 0.0),
        ("renormalize", "trl-server-distill", 0.0),
        ("tail", "trl-server-distill", 0.5),
        ("renormalize", "trl-server-distill", 0.5),
        ("tail", "trl-server-distill", 1.0),
    ],
)
def test_a_top_k_objective_is_written_as_it_computes(rule, preset, beta):
    """The code an LM remedy shows for a top-k target (the fingerprint names such members) computes the
    loss the objective computes: renormalized kept mass, DistillKit's tail bucket, TRL's server path."""
    if preset:
        k = 4 if beta == 0.0 else 1
        conv = resolve(preset=preset, task="causal-lm", beta=beta, temperature=2.0, top_k=k, top_k_rule=rule)
        conv = conv.__class__(**{**conv.__dict__, "preset": "kd", "form": "weights"})  # its python loss
    else:
        conv = resolve(task="causal-lm", alpha=0.5, temperature=2.0, top_k=4, top_k_rule=rule)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    y = torch.randint(16, (2, 5), generator=g)
    ns = {"F": torch.nn.functional, "torch": torch, "s": s, "t": t, "y": y.flatten()}
    ns["mask"] = torch.ones(2, 5)
    exec(conv.code(), ns)  # noqa: S102  the snippet is the loss
    ce, kd = conv.unit_terms(s, t, y)
    a, b = conv.term_weights(16)
    assert torch.allclose(ns["loss"], a * ce + b * kd, rtol=1e-5)


# --- TRL's ServerDistillationTrainer, transcribed from huggingface/trl@f2cd577
# trl/experimental/server_distillation/server_distillation_trainer.py (names and steps as there) ---


def _trl_jsd_divergence(student_log_probs, teacher_log_probs, beta, support_mask):  # :27-54
    safe_student = torch.where(support_mask, student_log_probs, torch.zeros_like(student_log_probs))
    safe_teacher = torch.where(support_mask, teacher_log_probs, torch.zeros_like(teacher_log_probs))
    student_probs = torch.where(support_mask, student_log_probs.exp(), torch.zeros_like(student_log_probs))
    teacher_probs = torch.where(support_mask, teacher_log_probs.exp(), torch.zeros_like(teacher_log_probs))
    if beta == 0:
        return torch.nan_to_num(teacher_probs * (safe_teacher - safe_student), nan=0.0)
    if beta == 1:
        return torch.nan_to_num(student_probs * (safe_student - safe_teacher), nan=0.0)
    tiny = torch.finfo(student_probs.dtype).tiny
    mixture_probs = (1 - beta) * student_probs + beta * teacher_probs
    safe_mixture = torch.where(
        support_mask, torch.log(mixture_probs.clamp_min(tiny)), torch.zeros_like(safe_student)
    )
    kl_teacher = torch.nan_to_num(teacher_probs * (safe_teacher - safe_mixture), nan=0.0)
    kl_student = torch.nan_to_num(student_probs * (safe_student - safe_mixture), nan=0.0)
    return beta * kl_teacher + (1 - beta) * kl_student


def _trl_add_tail_bucket(log_probs, valid_mask):  # :71-81
    log_sum = torch.clamp(torch.logsumexp(log_probs, dim=-1, keepdim=True), max=-1e-7)
    tail = torch.log(-torch.expm1(log_sum))
    tail_mask = torch.ones_like(valid_mask[..., :1], dtype=torch.bool)
    return torch.cat([log_probs, tail], dim=-1), torch.cat([valid_mask, tail_mask], dim=-1)


def _trl_sparse(student_lp, teacher_lp, mask, add_tail):  # :224-237, :524-536
    neg_inf = torch.tensor(float("-inf"))
    student_lp, teacher_lp = torch.where(mask, student_lp, neg_inf), torch.where(mask, teacher_lp, neg_inf)
    if add_tail:
        s, support = _trl_add_tail_bucket(student_lp, mask)
        t, _ = _trl_add_tail_bucket(teacher_lp, mask)
        return s, t, support
    s = student_lp - torch.logsumexp(student_lp, dim=-1, keepdim=True)
    return s, teacher_lp - torch.logsumexp(teacher_lp, dim=-1, keepdim=True), mask


def _trl_per_token(s_logits, t_logits, y, temperature, beta, k, add_tail):
    """Per token, before `_reduce_divergence_loss`: the student's log-softmax at T (:322), the teacher's
    top-k and actual-token log-probabilities at T as the vLLM server returns them (processed_logprobs)."""
    student_log_probs = torch.log_softmax(s_logits / temperature, -1)
    teacher_log_probs = torch.log_softmax(t_logits / temperature, -1)
    if beta == 0:  # _compute_server_forward_kl_loss, :503-545
        top_lp, top_ids = teacher_log_probs.topk(k, -1)
        valid = top_lp > float("-inf")
        s, t, mask = _trl_sparse(student_log_probs.gather(-1, top_ids), top_lp, valid, add_tail)
        return _trl_jsd_divergence(s, t, 0.0, mask).sum(-1)
    top1_lp, top1_ids = teacher_log_probs.max(-1)  # _compute_sparse_top_1_divergence_loss, :197-242
    actual_lp = teacher_log_probs.gather(-1, y[..., None])[..., 0]
    if beta == 1:
        support = y[..., None]
        support_mask = torch.ones_like(support, dtype=torch.bool)
        teacher_support = actual_lp[..., None]
    else:
        support = torch.cat([top1_ids[..., None], y[..., None]], -1)
        support_mask = torch.ones_like(support, dtype=torch.bool)
        support_mask[..., 1] = support[..., 1] != support[..., 0]
        teacher_support = torch.stack([top1_lp, actual_lp], -1)
        support = torch.where(support_mask, support, torch.zeros_like(support))
    s, t, mask = _trl_sparse(student_log_probs.gather(-1, support), teacher_support, support_mask, add_tail)
    return _trl_jsd_divergence(s, t, beta, mask).sum(-1)


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize(
    ("beta", "k", "temperature"),
    [(0.0, 4, 1.0), (0.0, 4, 2.0), (0.0, 1, 1.0), (0.5, 1, 1.0), (0.3, 1, 2.0), (1.0, 1, 1.0)],
)
def test_trl_server_path_is_trls_own_loss(beta, k, temperature, add_tail):
    """`--preset trl-server-distill` computes, per token, what TRL's ServerDistillationTrainer computes:
    the forward KL on the teacher's top k (beta 0) or a JSD / reverse KL on top-1 support with the text's
    token (beta > 0), with loss_add_tail's bucket or both sides renormalized; some text tokens are the
    teacher's top one, so the deduplicated support is exercised."""
    s, t = _pair(3, n=40, v=12)
    y = torch.randint(12, (40,), generator=torch.Generator().manual_seed(4))
    y[:10] = t[:10].argmax(-1)
    rule = "tail" if add_tail else "renormalize"
    conv = resolve(
        preset="trl-server-distill",
        task="causal-lm",
        beta=beta,
        top_k=k,
        top_k_rule=rule,
        temperature=temperature,
    )
    got = token_divergence(s, t, temperature, "float32", k, conv.divergence, beta, conv.top_k_rule, y)
    want = _trl_per_token(s, t, y, temperature, beta, k, add_tail)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if not add_tail and (k == 1 and beta in (0.0, 1.0)):  # one class renormalized: nothing to learn
        assert float(got.abs().max()) == 0.0
    else:
        assert float(got.max()) > 0.0


def test_trl_server_path_in_its_own_words_and_refusals():
    conv = resolve(preset="trl-server-distill", task="causal-lm")
    assert (conv.divergence, conv.beta, conv.top_k, conv.top_k_rule) == ("jsd", 1.0, 1, "tail_at_t")
    assert (
        conv.setting() == "beta=1, temperature=1, loss_top_k=1, loss_add_tail=True"
    )  # no lmbda in its config
    assert (
        "ServerDistillationConfig(output_dir='out', beta=1, temperature=1, loss_top_k=1, loss_add_tail=True)"
        in conv.code()
    )
    assert "top-1 support: the text's token" in conv.to_dict(16)["objective"]
    fwd = resolve(preset="trl-server-distill", task="causal-lm", beta=0.0, top_k=8, top_k_rule="renormalize")
    assert fwd.top_k_rule == "renormalize_both" and "loss_add_tail=False" in fwd.code()
    assert "top 8 ids (both sides renormalized over them)" in fwd.to_dict(16)["objective"]
    with pytest.raises(UserError, match="top-1 support only"):
        resolve(preset="trl-server-distill", task="causal-lm", beta=0.5, top_k=4)
    with pytest.raises(UserError, match="forward KL"):
        resolve(task="causal-lm", divergence="reverse_kl", top_k=4, top_k_rule="tail")
