"""Was the train text prepared like the val text? The causal-LM side of preprocessing parity and
covariate shift: token statistics of both splits against each split's own two halves, the teacher as a
probe of the text, and a domain classifier on both models' pooled hidden states."""

from __future__ import annotations

import math

import numpy as np

from ..lm.evaluation import LMEvaluation
from ..lm.text_stats import js_divergence
from .base import Finding, Status, grade, register_check, worst

VANISH_MIN_RATE = 0.02  # a token class this common on one side and (almost) absent on the other
VANISH_MIN_HELD = 0.5  # ... and held by at least this share of that side's rows


def _halves(ev: LMEvaluation, split: str, key: str) -> np.ndarray:
    return ev.splits[split]["text"][key]  # [2, V]


def _unigram(ev: LMEvaluation) -> dict:
    """Train-vs-val divergence of the counted tokens' distribution, half against half, and the same
    within each split (the yardstick: two halves of one split differ by sampling alone)."""
    tr, va = _halves(ev, "train", "labels"), _halves(ev, "val", "labels")
    between = float(np.mean([js_divergence(tr[i], va[j]) for i in (0, 1) for j in (0, 1)]))
    within = float(np.mean([js_divergence(*tr), js_divergence(*va)]))
    p, q = (v.sum(0) / max(v.sum(), 1.0) for v in (tr, va))
    moved = np.argsort(-np.abs(p - q))[:3]
    return {
        "unigram_js": between,
        "unigram_js_within": within,
        "unigram_js_ratio": between / max(within, 1e-9),
        "unigram_js_excess": between - within,
        "moved_tokens": [{"id": int(i), "train": float(p[i]), "val": float(q[i])} for i in moved],
    }


def _rate_shift(a: np.ndarray, b: np.ndarray, rows: tuple[float, float], eff: float) -> dict:
    """Rates a [2, C] (train halves) vs b [2, C] (val halves): difference, within-split yardstick, z."""
    ra, rb = a.sum(0) / max(rows[0], 1.0), b.sum(0) / max(rows[1], 1.0)
    within = np.maximum(np.abs(a[0] / max(rows[0] / 2, 1) - a[1] / max(rows[0] / 2, 1)), 0)
    within = np.maximum(within, np.abs(b[0] / max(rows[1] / 2, 1) - b[1] / max(rows[1] / 2, 1)))
    p = np.clip((ra + rb) / 2, 1e-6, 1 - 1e-6)
    se = np.sqrt(p * (1 - p) * 2 / max(eff, 1.0))
    excess = np.maximum(np.abs(ra - rb) - within, 0.0)
    return {"train": ra, "val": rb, "within": within, "excess": excess, "z": (ra - rb) / se}


def _classes(ev: LMEvaluation) -> dict:
    """Rates of the token classes (upper-case, whitespace, ...) among counted tokens, train vs val, and
    the share of a common class one side lost: a preparation step removes a class outright (lower-casing,
    stripping indentation), where another mix of documents only moves its rate."""
    if ev.token_classes is None:
        return {}
    names, table = ev.token_classes
    tr, va = _halves(ev, "train", "labels"), _halves(ev, "val", "labels")
    v = min(tr.shape[1], table.shape[0])
    a, b = tr[:, :v] @ table[:v], va[:, :v] @ table[:v]  # [2, C] counted tokens per class
    eff = min(ev.train.effective_n, ev.val.effective_n)
    r = _rate_shift(a, b, (tr.sum(), va.sum()), eff)
    worst_c = int(np.argmax(r["excess"] * (np.abs(r["z"]) >= 3)))
    keys = ("train", "val", "within")
    rates = {n: {k: float(r[k][i]) for k in keys} for i, n in enumerate(names) if n != "special"}
    hi, lo = np.maximum(r["train"], r["val"]), np.minimum(r["train"], r["val"])
    eligible = (hi >= VANISH_MIN_RATE) & (np.abs(r["z"]) >= 5)
    absent = _row_absent_shares(ev)
    held = None
    if absent is not None:  # the share of the richer side's rows that hold the class at all
        richer = np.where(r["train"] >= r["val"], 0, 1)
        held = 1.0 - np.where(richer == 0, absent[0], absent[1])[: len(hi)]
        # a class most rows hold can vanish only by a preparation step; one that a few documents carry
        # (digits in a table-heavy file) drops its rate by 90 % when another mix leaves those out
        eligible &= held >= VANISH_MIN_HELD
    lost = np.where(eligible, 1 - lo / np.maximum(hi, 1e-12), 0.0)
    gone = int(np.argmax(lost))
    out = {
        "class_rates": rates,
        "class_shift": float(r["excess"][worst_c]),
        "class_shift_z": float(abs(r["z"][worst_c])),
        "class_shift_name": names[worst_c],
        "class_vanished": float(lost[gone]),
        "class_vanished_name": names[gone],
    }
    if held is not None:
        out["class_vanished_rows_held"] = float(held[gone])
    return out


def _row_absent_shares(ev: LMEvaluation) -> list[np.ndarray] | None:
    """[train, val]: per token class, the share of the split's rows that hold no token of it (None when
    the pass did not count rows)."""
    texts = [ev.splits[s]["text"] for s in ("train", "val")]
    if any("row_absent" not in t for t in texts):
        return None
    return [t["row_absent"].sum(0) / max(t["row_attended"].sum(), 1.0) for t in texts]


def _row_classes(ev: LMEvaluation) -> dict:
    """The share of rows holding no token of a class at all, train vs val, beyond the difference between
    two halves of one split: a step that normalized some documents of one split (lower-cased half of
    them, stripped their indentation) empties whole rows of a class, where another mix of documents
    moves a class's token rate but seldom empties rows of it (zoo: 0.41-0.49 against at most 0.16)."""
    if ev.token_classes is None:
        return {}
    share = _row_absent_shares(ev)  # [C] each
    if share is None:
        return {}
    texts = [ev.splits[s]["text"] for s in ("train", "val")]
    names = ev.token_classes[0]
    halves = [t["row_absent"] / np.maximum(t["row_attended"][:, None], 1.0) for t in texts]  # [2, C] each
    within = np.maximum(*(np.abs(h[0] - h[1]) for h in halves))
    excess = np.maximum(np.abs(share[0] - share[1]) - within, 0.0)
    excess[[i for i, n in enumerate(names) if n == "special"]] = 0.0  # BOS/EOS rows: the row-edge statistic's
    c = int(np.argmax(excess))
    return {
        "row_class_absent_excess": float(excess[c]),
        "row_class_absent_name": names[c],
        "row_class_absent_train": float(share[0][c]),
        "row_class_absent_val": float(share[1][c]),
        "row_class_absent_within": float(within[c]),
        "row_class_absent_side": "train" if share[0][c] > share[1][c] else "val",
    }


def _row_edges(ev: LMEvaluation) -> dict:
    """The token that starts (ends) most rows on each side, and how much more often it does on one:
    a BOS or EOS added on one side only, or a template applied to one split."""
    out = {}
    for key, name in (("first", "row_start"), ("last", "row_end")):
        halves = [_halves(ev, s, key) for s in ("train", "val")]
        tr, va = (h.sum(0) for h in halves)
        rows = (max(tr.sum(), 1.0), max(va.sum(), 1.0))
        best, best_id = 0.0, None
        for tok in {int(np.argmax(tr)), int(np.argmax(va))}:
            shift = abs(tr[tok] / rows[0] - va[tok] / rows[1])
            if shift >= best:
                best, best_id = shift, tok
        # the yardstick: how far the two halves of one split differ in that token's share (few documents
        # start their rows alike by chance)
        within = max(
            abs(h[0, best_id] / max(h[0].sum(), 1.0) - h[1, best_id] / max(h[1].sum(), 1.0)) for h in halves
        )
        out[f"{name}_shift"] = best
        out[f"{name}_excess"] = max(0.0, best - float(within))
        out[f"{name}_token"] = best_id
        out[f"{name}_text"] = _token_name(ev, best_id)
        out[f"{name}_train"] = float(tr[best_id] / rows[0])
        out[f"{name}_val"] = float(va[best_id] / rows[1])
    return out


def _shape(ev: LMEvaluation) -> dict:
    """Row lengths, padding and rows filled to the end (packing, truncation) on each side."""
    out = {}
    for split in ("train", "val"):
        s = {k: float(v.sum()) for k, v in ev.splits[split]["text"]["shape"].items()}
        rows = max(s["rows"], 1.0)
        out[f"length_{split}"] = s["length"] / rows
        for k in ("padded", "left_padded", "full"):
            out[f"{k}_share_{split}"] = s[k] / rows
    out["length_ratio"] = out["length_train"] / max(out["length_val"], 1e-9)
    out["full_share_shift"] = abs(out["full_share_train"] - out["full_share_val"])
    out["left_padded_shift"] = abs(out["left_padded_share_train"] - out["left_padded_share_val"])
    return out


def _token_name(ev: LMEvaluation, tok: int | None) -> str:
    if tok is None:
        return "?"
    if ev.vocab_text is not None and tok < len(ev.vocab_text[0]):
        return repr(ev.vocab_text[0][tok])
    return f"id {tok}"


@register_check("preprocessing_parity", task="causal-lm", title="Text preparation parity", order=10)
def lm_preprocessing_parity(
    ev: LMEvaluation,
    *,
    teacher_excess_warn: float = 0.10,
    teacher_excess_fail: float = 0.30,
    vanished_fail: float = 0.85,
    edge_shift_warn: float = 0.10,
    edge_shift_fail: float = 0.30,
    class_shift_warn: float = 0.02,
    row_class_warn: float = 0.10,
    row_class_fail: float = 0.20,
    js_ratio_warn: float = 3.0,
) -> Finding:
    """Train vs val text: the teacher's NLL on each (it predicts text prepared unlike what it learned
    worse), token-class rates, the tokens that start and end rows, row shapes, and the unigram
    divergence against each split's own two halves.

    teacher_excess_*: teacher NLL train minus val, nats/token; vanished_fail: the share of a common token
    class (upper-case, whitespace, ...) that one side lost; edge_shift_*: share of rows starting or
    ending with a token on one side more than the other; class_shift_warn: a class's rate difference
    beyond its within-split difference (z >= 3); row_class_*: the share of rows with no token of a class
    on one side more than the other, beyond its within-split difference; js_ratio_warn: unigram
    divergence train-vs-val over within-split. class_shift and js_ratio only warn: another mix of
    documents moves them too."""
    tr, va = ev.train, ev.val
    evidence = {
        "teacher_nll_train": tr["teacher"]["loss"],
        "teacher_nll_val": va["teacher"]["loss"],
        "teacher_train_excess": tr["teacher"]["loss"] - va["teacher"]["loss"],
        "tokens": {"train": tr.n, "val": va.n},
        "sequences": {"train": tr["facts"]["sequences"], "val": va["facts"]["sequences"]},
        **_unigram(ev),
        **_classes(ev),
        **_row_classes(ev),
        **_row_edges(ev),
        **_shape(ev),
    }
    edges = max(evidence["row_start_shift"], evidence["row_end_shift"])
    statuses = {
        "teacher": grade(evidence["teacher_train_excess"], teacher_excess_warn, teacher_excess_fail),
        "edges": grade(edges, edge_shift_warn, edge_shift_fail),
        "unigram": grade(evidence["unigram_js_ratio"], js_ratio_warn, math.inf),
    }
    if "class_shift" in evidence:
        shift = evidence["class_shift"] if evidence["class_shift_z"] >= 3 else 0.0
        statuses["classes"] = grade(shift, class_shift_warn, math.inf)
        statuses["vanished"] = grade(evidence["class_vanished"], math.inf, vanished_fail)
    if "row_class_absent_excess" in evidence:
        statuses["rows"] = grade(evidence["row_class_absent_excess"], row_class_warn, row_class_fail)
    summary = _summary(ev, evidence, statuses)
    return Finding("preprocessing_parity", worst(*statuses.values()), summary, evidence)


def _summary(ev: LMEvaluation, e: dict, statuses: dict) -> str:
    """The statistics that moved, largest first in kind (the teacher, a lost class, row edges, mixes)."""
    parts = []
    if statuses["teacher"] is not Status.PASS:
        parts.append(
            f"the teacher predicts the train text {e['teacher_train_excess']:+.3f} nats/token worse than val "
            f"({e['teacher_nll_train']:.3f} vs {e['teacher_nll_val']:.3f}): train was prepared unlike the "
            "text it learned"
        )
    if statuses.get("vanished", Status.PASS) is not Status.PASS:
        parts.append(
            _class_words(e, e["class_vanished_name"], f"one side lost {e['class_vanished']:.0%} of them")
        )
    elif statuses.get("classes", Status.PASS) is not Status.PASS:
        within = e["class_rates"].get(e["class_shift_name"], {}).get("within", 0)
        parts.append(_class_words(e, e["class_shift_name"], f"halves of one split differ by {within:.1%}"))
    if statuses.get("rows", Status.PASS) is not Status.PASS:
        parts.append(_row_class_words(e, statuses["rows"] is Status.FAIL))
    if statuses["edges"] is not Status.PASS:
        which = "row_start" if e["row_start_shift"] >= e["row_end_shift"] else "row_end"
        where = "start" if which == "row_start" else "end"
        parts.append(
            f"{_token_name(ev, e[f'{which}_token'])} {where}s {e[f'{which}_train']:.0%} of train rows and "
            f"{e[f'{which}_val']:.0%} of val rows"
        )
    if statuses["unigram"] is not Status.PASS:
        parts.append(
            f"the token distributions differ {e['unigram_js_ratio']:.1f}x more between train and val than "
            f"between halves of one split (JS {e['unigram_js']:.4f} vs {e['unigram_js_within']:.4f})"
        )
    sizes = f"{e['tokens']['train']:,} train and {e['tokens']['val']:,} val tokens"
    if not parts:
        return (
            f"train and val text look alike over {sizes}: teacher NLL {e['teacher_nll_train']:.3f} on train, "
            f"{e['teacher_nll_val']:.3f} on val; token distributions {e['unigram_js_ratio']:.1f}x their "
            "within-split difference"
        )
    return "; ".join(parts) + f" ({sizes})"


def _row_class_words(e: dict, clear: bool) -> str:
    """Clear (the fail level, past every document mix of the zoo): a preparation step; below it, that or
    another mix of documents."""
    side = e["row_class_absent_side"]
    why = (
        f"some {side} documents were normalized"
        if clear
        else f"some {side} documents were normalized, or {side} draws more documents without them"
    )
    return (
        f"{e['row_class_absent_train']:.0%} of train rows and {e['row_class_absent_val']:.0%} of val rows "
        f"hold no '{e['row_class_absent_name']}' token at all (halves of one split differ by "
        f"{e['row_class_absent_within']:.0%}): {why}"
    )


def _class_words(e: dict, name: str, tail: str) -> str:
    rates = e["class_rates"].get(name, {})
    return (
        f"'{name}' tokens are {rates.get('train', 0):.1%} of counted train tokens and "
        f"{rates.get('val', 0):.1%} of val ({tail})"
    )


@register_check(
    "covariate_shift",
    task="causal-lm",
    needs=("pooled_features",),
    title="Covariate shift (hidden states)",
    order=70,
)
def lm_covariate_shift(ev: LMEvaluation, *, shift_warn: float = 0.65) -> Finding:
    """A domain classifier (train vs val) on each model's mean-pooled last hidden states per sequence.
    It only warns: another mix of documents separates as well as another preparation (the teacher's NLL
    on each split, in preprocessing_parity, tells which); a train loader that augments (token dropout,
    span masking) makes a separable train side expected."""
    from .covariate_shift import MAX_ROWS, domain_auc, unshifted_words

    feats = {s: ev.splits[s]["features"] for s in ("train", "val")}
    aucs = {m: domain_auc(feats["train"][m], feats["val"][m], ev.config.seed) for m in ("teacher", "student")}
    both = min(aucs.values())
    rows = min(len(feats["train"]["student"]), len(feats["val"]["student"]), MAX_ROWS)
    augmented = bool(ev.train_augmented)
    evidence = {
        "auc_teacher": aucs["teacher"],
        "auc_student": aucs["student"],
        "auc_both": both,
        "auc_excess": aucs["student"] - aucs["teacher"],
        "rows_per_split": rows,
        "train_augmented": float(augmented),
        "auc_unexplained": 0.5 if augmented else both,  # separability augmentation does not explain
    }
    status = grade(both, shift_warn, math.inf, what="the domain classifier's AUC")
    why = (
        "both models tell train text from val text (another document mix or another preparation)"
        if status is Status.WARN
        else unshifted_words(aucs, shift_warn, "train text", "val text", "the text")
    )
    if augmented and status is not Status.PASS:
        status, why = Status.PASS, "expected: the train loader augments its batches (a second read differs)"
    return Finding(
        "covariate_shift",
        status,
        f"domain classifier AUC ({rows} sequences per split, mean-pooled last hidden states): teacher "
        f"{aucs['teacher']:.2f}, student {aucs['student']:.2f}: {why}",
        evidence,
    )
