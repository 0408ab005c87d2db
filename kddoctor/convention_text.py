"""A KD convention said back: its formula and sentence, its objective in the trainer's own words, and a
setting written where its user writes it (Python, a codebase's YAML, or its command line)."""

from __future__ import annotations

from .losses import SUPPORT_RULES, effective_divergence
from .presets import PRESETS
from .presets import written as w

DIVERGENCE_WORDS = {
    "forward_kl": "KL(teacher || student)",
    "reverse_kl": "reverse KL(student || teacher)",
    "jsd": "generalized JSD",
    "skew_forward_kl": "skew KL(teacher || beta*teacher + (1-beta)*student)",
    "skew_reverse_kl": "skew reverse KL(student || (1-beta)*teacher + beta*student)",
    "tv": "total variation distance",
}
RULE_WORDS = {
    "renormalize": "the kept mass renormalized",
    "tail": "the missing mass as one tail bucket",
    "none": "the missing mass dropped",
    "tail_at_t": "each side's mass outside them at T as one tail bucket",
    "renormalize_both": "both sides renormalized over them",
}
TRAINER_CODE = {  # an LM trainer's own config object, for its python presets
    "trl-gkd": ("from trl.experimental.gkd import GKDConfig", "GKDConfig"),
    "trl-distill": ("from trl.experimental.distillation import DistillationConfig", "DistillationConfig"),
    "trl-server-distill": (
        "from trl.experimental.server_distillation import ServerDistillationConfig",
        "ServerDistillationConfig",
    ),
}
DISTILLM_TYPES = {
    "forward_kl": "fkl",
    "reverse_kl": "rkl",
    "skew_forward_kl": "sfkl",
    "skew_reverse_kl": "srkl",
    "jsd": "jsd",
    "tv": "tvd",
}


def objective_words(conv) -> str:
    """The KD term's divergence in words: its kind, beta, top-k rule and on-policy share."""
    kind = conv.divergence
    words = DIVERGENCE_WORDS[kind]
    b = conv.beta if conv.beta is not None else (0.5 if kind == "jsd" else 0.1)
    if kind == "jsd":
        mix = "forward KL" if b == 0 else "reverse KL" if b == 1 else f"M = {b:g}*teacher + {1 - b:g}*student"
        words += f" with beta={b:g} ({mix})"
    elif kind.startswith("skew"):
        words = words.replace("beta*", f"{b:g}*").replace("(1-beta)*", f"{1 - b:g}*")
    if conv.top_k and top1_support(conv):
        words += (
            f" on top-1 support: {support_words(conv)} ({RULE_WORDS[conv.top_k_rule].replace('them', 'it')})"
        )
    elif conv.top_k:
        words += f" on the teacher's top {conv.top_k} ids ({RULE_WORDS[conv.top_k_rule]})"
    if conv.lmbda:
        at = f" at temperature {conv.sample_temperature:g}" if conv.sample_temperature else ""
        words += f"; {conv.lmbda:.0%} of batches sampled by the student{at}"
    return words


def top1_support(conv) -> bool:
    """A top-1 support holding the text's token (TRL's server path for beta > 0), not a teacher top-k."""
    kind = effective_divergence(conv.divergence, conv.beta)
    return conv.top_k_rule in SUPPORT_RULES and kind != "forward_kl"


def support_words(conv) -> str:
    """The ids of TRL's top-1 support: the text's token (reverse KL), with the teacher's top (a JSD)."""
    one = effective_divergence(conv.divergence, conv.beta) == "reverse_kl"
    return "the text's token" if one else "the teacher's top token and the text's"


def value(v) -> str:
    """A setting's value as its code writes it (True, 0.5, 128)."""
    return str(v) if isinstance(v, bool) else f"{v:g}"


def setting_code(conv) -> str:
    """This setting written where the user writes it (Python, the codebase's YAML, its CLI)."""
    p = PRESETS[conv.preset]
    params = conv.user_params()
    if p.name in TRAINER_CODE:
        imp, cls = TRAINER_CODE[p.name]
        args = ", ".join(f"{k}={value(v)}" for k, v in params.items())
        return f"{imp}\nargs = {cls}(output_dir='out', {args})"
    if p.name == "distillkit":
        return _distillkit(conv)
    if p.name == "distillm":
        args = " ".join(f"{k} {v:g}" for k, v in params.items() if k.startswith("--"))
        return f"python finetune.py --type {DISTILLM_TYPES[conv.divergence]} {args}"
    if p.syntax == "shell":
        script = {"deit": "main.py", "repdistiller": "train_student.py --distill kd"}.get(p.name, "train.py")
        return f"python {script} " + " ".join(f"{k} {v:g}" for k, v in params.items())
    if p.name == "mdistiller":
        return "\n".join(
            ["KD:", f"  TEMPERATURE: {conv.temperature:g}", "  LOSS:"]
            + [f"    {k}: {params[k]:g}" for k in (p.ce_name, p.kd_name)]
        )
    if p.syntax == "yaml":
        return "\n".join(f"{k}: {v:g}" for k, v in params.items())
    return python_code(conv)


def _distillkit(conv) -> str:
    """DistillKit's loss_functions block (README:79-85)."""
    rule = {"renormalize": "zero", "tail": "symmetric_uniform"}.get(conv.top_k_rule, "zero")
    lines = ["loss_functions:"]
    if conv.ce_weight:
        lines += ["  - function: cross_entropy", f"    weight: {w(conv.ce_weight):g}"]
    kind = {"forward_kl": "kl", "tv": "tvd", "jsd": "jsd"}.get(conv.divergence, "kl")
    lines += [
        f"  - function: {kind}",
        f"    weight: {w(conv.kd_weight):g}",
        f"    temperature: {w(conv.temperature):g}",
    ]
    if conv.top_k:
        lines.append(f"    missing_probability_handling: {rule}")
    return "\n".join(lines)


def _token_divergence_code(conv) -> str:
    """The per-token KD term in PyTorch (logp, logq: the teacher's and student's log-softmax at T)."""
    kind, b = (
        conv.divergence,
        conv.beta if conv.beta is not None else (0.5 if conv.divergence == "jsd" else 0.1),
    )
    kl = "(F.kl_div({x}, {y}, log_target=True, reduction='none').sum(-1) * mask).sum() / mask.sum()"
    if conv.top_k and conv.top_k_rule in SUPPORT_RULES:
        return _support_code(conv, b)
    if conv.top_k and conv.top_k_rule == "renormalize":
        return (
            f"kth = t.topk({conv.top_k}, -1).values[..., -1:]  # keep the teacher's top {conv.top_k}\n"
            "p = F.softmax(t.masked_fill(t < kth, float('-inf')) / T, -1)\n"
            "per = (torch.xlogy(p, p) - p * F.log_softmax(s / T, -1)).sum(-1)\n"
            "kd = (per * mask).sum() / mask.sum()"
        )
    if conv.top_k and conv.top_k_rule == "none":
        return (
            f"top = t.topk({conv.top_k}, -1).indices  # the teacher's kept ids, the rest dropped\n"
            "lp, lq = F.log_softmax(t / T, -1).gather(-1, top), F.log_softmax(s / T, -1).gather(-1, top)\n"
            "per = (lp.exp() * (lp - lq)).sum(-1)\n"
            "kd = (per * mask).sum() / mask.sum()"
        )
    if conv.top_k:  # one tail bucket, tempered as one class (DistillKit's SYMMETRIC_UNIFORM)
        return (
            f"top = t.topk({conv.top_k}, -1).indices  # the teacher's kept ids\n"
            "lp1 = F.log_softmax(t, -1).gather(-1, top)  # their log-probabilities at T 1\n"
            "rest = (1 - lp1.exp().sum(-1)).clamp_min(0).log() / T  # the missing mass, one class\n"
            "z = torch.logaddexp(torch.logsumexp(lp1 / T, -1), rest)\n"
            "lp, p_tail = lp1 / T - z[..., None], (rest - z).exp()\n"
            "lq = F.log_softmax(s / T, -1).gather(-1, top)\n"
            "q_tail = (1 - lq.exp().sum(-1)).clamp_min(1e-12)\n"
            "per = (lp.exp() * (lp - lq)).sum(-1) + torch.xlogy(p_tail, p_tail) - p_tail * q_tail.log()\n"
            "kd = (per * mask).sum() / mask.sum()"
        )
    lp, lq = "F.log_softmax(t / T, -1)", "F.log_softmax(s / T, -1)"
    if kind == "forward_kl" or (kind == "jsd" and b == 0):
        return "kd = " + kl.format(x=lq, y=lp)
    if kind == "reverse_kl" or (kind == "jsd" and b == 1):
        return "kd = " + kl.format(x=lp, y=lq)
    if kind == "tv":
        return (
            "kd = ((F.softmax(t / T, -1) - F.softmax(s / T, -1)).abs().sum(-1) / 2 * mask).sum() / mask.sum()"
        )
    mix = {"jsd": (b, 1 - b), "skew_forward_kl": (b, 1 - b), "skew_reverse_kl": (1 - b, b)}[kind]
    head = (
        f"logp, logq = {lp}, {lq}\n"
        f"logm = torch.logsumexp(torch.stack([logp + math.log({mix[0]:g}), "
        f"logq + math.log({mix[1]:g})]), 0)\n"
    )
    terms = {
        "jsd": f"{b:g} * "
        + kl.format(x="logm", y="logp")
        + f" + {1 - b:g} * "
        + kl.format(x="logm", y="logq"),
        "skew_forward_kl": kl.format(x="logm", y="logp"),
        "skew_reverse_kl": kl.format(x="logm", y="logq"),
    }
    return head + "kd = " + terms[kind]


def _support_code(conv, b: float) -> str:
    """TRL's server path (losses.support_divergence) in PyTorch: the support, each side on it with a
    tail bucket or renormalized, the divergence with the empty slots counting 0."""
    kind = effective_divergence(conv.divergence, conv.beta)
    if kind == "forward_kl":
        lines = [f"idx = t.topk({conv.top_k}, -1).indices  # the teacher's top {conv.top_k}"]
        lines.append("keep = torch.ones_like(idx, dtype=torch.bool)")
    elif kind == "reverse_kl":
        lines = ["idx = y.view(t.shape[:-1]).clamp_min(0)[..., None]  # the text's token"]
        lines.append("keep = torch.ones_like(idx, dtype=torch.bool)")
    else:
        lines = [
            "top, text = t.argmax(-1, keepdim=True), y.view(t.shape[:-1]).clamp_min(0)[..., None]",
            "idx = torch.cat([top, text], -1)  # the teacher's top token and the text's, once",
            "keep = torch.cat([torch.ones_like(top, dtype=torch.bool), text != top], -1)",
        ]
    lines.append("lq = F.log_softmax(s / T, -1).gather(-1, idx).masked_fill(~keep, float('-inf'))")
    lines.append("lp = F.log_softmax(t / T, -1).gather(-1, idx).masked_fill(~keep, float('-inf'))")
    if conv.top_k_rule == "tail_at_t":
        lines += [
            "def tail(x):  # loss_add_tail: one more class, the mass outside the support",
            "    total = x.logsumexp(-1, keepdim=True).clamp(max=-1e-7)",
            "    return torch.cat([x, torch.log(-torch.expm1(total))], -1)",
            "lq, lp = tail(lq), tail(lp)",
            "keep = torch.cat([keep, torch.ones_like(keep[..., :1])], -1)",
        ]
    else:
        lines.append("lq, lp = lq - lq.logsumexp(-1, keepdim=True), lp - lp.logsumexp(-1, keepdim=True)")
    lines += [
        "sl, tl = lq.masked_fill(~keep, 0), lp.masked_fill(~keep, 0)",
        "q, p = lq.exp().masked_fill(~keep, 0), lp.exp().masked_fill(~keep, 0)",
    ]
    if kind == "forward_kl":
        lines.append("per = p * (tl - sl)")
    elif kind == "reverse_kl":
        lines.append("per = q * (sl - tl)")
    else:
        lines += [
            f"m = ({1 - b:g} * q + {b:g} * p).clamp_min(1e-38).log().masked_fill(~keep, 0)",
            f"per = {b:g} * p * (tl - m) + {1 - b:g} * q * (sl - m)",
        ]
    lines.append("kd = (torch.nan_to_num(per, nan=0.0).sum(-1) * mask).sum() / mask.sum()")
    return "\n".join(lines)


def python_code(conv) -> str:
    """The loss in PyTorch, with this convention's T² choice and reduction, whatever the preset: what a
    trainer's own config cannot state (a CE term beside GKD's, a T² factor) still reads there."""
    if conv.task == "causal-lm":  # per counted token (the remedy form; the masks of the CE)
        return _lm_python(conv)
    else:
        kd = f"F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='{conv.reduction}')"
        y = "y"
    kd += " * T**2" if conv.t2 else ""
    if conv.form == "alpha_kd":
        weights = (
            f"alpha = {w(conv.kd_weight):g}",
            f"(1 - alpha) * F.cross_entropy(s, {y}) + alpha * kd",
        )
    elif conv.form == "alpha_ce":
        weights = (
            f"alpha = {w(conv.ce_weight):g}",
            f"alpha * F.cross_entropy(s, {y}) + (1 - alpha) * kd",
        )
    else:
        weights = (
            f"ce_weight, kd_weight = {w(conv.ce_weight):g}, {w(conv.kd_weight):g}",
            f"ce_weight * F.cross_entropy(s, {y}) + kd_weight * kd",
        )
    return f"T = {w(conv.temperature):g}\n{weights[0]}\nkd = {kd}\nloss = {weights[1]}"


def _lm_python(conv) -> str:
    """A causal-LM loss per counted token (mask = labels[:, 1:] != -100 on logits[:, :-1])."""
    kd = _token_divergence_code(conv) + (" * T**2" if conv.t2 else "")
    y = "y, ignore_index=-100"
    if _kd_only(conv):
        return f"T = {w(conv.temperature):g}\n{kd}\nloss = kd"
    if conv.form == "alpha_kd":
        weights = (
            f"alpha = {w(conv.kd_weight):g}",
            f"(1 - alpha) * F.cross_entropy(s.flatten(0, 1), {y}) + alpha * kd",
        )
    elif conv.form == "alpha_ce":
        weights = (
            f"alpha = {w(conv.ce_weight):g}",
            f"alpha * F.cross_entropy(s.flatten(0, 1), {y}) + (1 - alpha) * kd",
        )
    else:
        weights = (
            f"ce_weight, kd_weight = {w(conv.ce_weight):g}, {w(conv.kd_weight):g}",
            f"ce_weight * F.cross_entropy(s.flatten(0, 1), {y}) + kd_weight * kd",
        )
    return f"T = {w(conv.temperature):g}\n{weights[0]}\n{kd}\nloss = {weights[1]}"


def _kd_only(conv) -> bool:
    """A trainer whose loss is its divergence alone (GKD), at that loss: its weights are not written."""
    return PRESETS[conv.preset].fixed_weights and (conv.ce_weight, conv.kd_weight) == (0.0, 1.0)


def formula(conv) -> str:
    if _kd_only(conv):
        return f"loss = {DIVERGENCE_WORDS[conv.divergence].split('(')[0].strip()}"
    if conv.form == "alpha_kd":
        return f"loss = (1-{conv.kd_weight:g})*CE + {conv.kd_weight:g}*KD"
    if conv.form == "alpha_ce":
        return f"loss = {conv.ce_weight:g}*CE + (1-{conv.ce_weight:g})*KD"
    return f"loss = {conv.ce_weight:g}*CE + {conv.kd_weight:g}*KD"


def sentence(conv, num_classes: int) -> str:
    """The convention assumed, in words, with each term's effective weight."""
    eff = conv.effective(num_classes)
    if conv.bare_kl:
        t2 = "the bare KL (torchdistill drops beta and T² when alpha is 0)"
    elif conv.t2:
        t2 = f"KD multiplied by T²={conv.temperature**2:g}"
    elif PRESETS[conv.preset].t2 is not None:
        t2 = f"KD not multiplied by T² (as {conv.preset} computes it)"
    else:
        t2 = "KD not multiplied by T² (--no-t2)"
    who = f" ({conv.preset}: {conv.setting()})" if conv.preset != "kd" else ""
    if conv.task == "causal-lm":
        at = f"T={conv.temperature:g}"
        if PRESETS[conv.preset].loss_temperature is not None:
            at = f"the loss at T {conv.temperature:g} (its temperature setting only samples)"
        return f"{formula(conv)}{who} with {at}, {t2}, {_token_words(conv, eff)}"
    red = f"KL reduced by '{conv.reduction}'"
    if conv.reduction == "sum":
        red += f" over training batches of {conv.train_batch_size}"
    return (
        f"{formula(conv)}{who} with T={conv.temperature:g}, {t2}, {red}; effective weights: "
        f"CE {eff['ce']:.3g}, KD {eff['kd_effective']:.3g} in CE-gradient units "
        f"({eff['kd_share']:.0%} of the total)"
    )


def _token_words(conv, eff: dict) -> str:
    """How a causal-LM KL was reduced, truncated and computed, and the share it really had."""
    red = {
        "token": "KL averaged per counted token",
        "batchmean": "KL summed over tokens and divided by the batch ('batchmean' on [B, L, V])",
        "mean": "KL averaged over every [B, L, V] element ('mean')",
        "sum": f"KL summed over [B, L, V] and training batches of {conv.train_batch_size}",
    }[conv.reduction]
    red = red.replace("KL", "the divergence") if conv.divergence != "forward_kl" else red
    return (
        f"KD term: {objective_words(conv)}; {red}, computed in {conv.kd_dtype}; at "
        f"{conv.tokens_per_sequence:.1f} counted tokens per sequence the KD term carries "
        f"{eff['kd_share']:.0%} of the loss"
    )
