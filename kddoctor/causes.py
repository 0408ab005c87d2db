"""Rank the causes: a pure function of the findings and the catalogue in causes.toml.

A cause is one or more *mechanisms* (distribution mismatch: input statistics, a broken val pipeline,
BatchNorm statistics, a train-mode teacher, covariate shift). Each mechanism has its own supporting and
contradicting signals, so a contradiction only vetoes the mechanism it disproves; the cause scores as
its best mechanism. A cause explains a gap, so its score never exceeds the strength of the gap that the
pair shows (size and statistical certainty, `[gap]` in the catalogue): a pair without a gap has no
likely cause, and a pair with a gap but no likely cause gets an "unexplained gap" verdict naming the
strongest lead instead of a calm one.
"""

from __future__ import annotations

import math
import tomllib
from functools import cache
from importlib import resources

from .remedies import convention_of, ran, remedy_context, render_remedies  # noqa: F401  (re-exported)

CAUSE_IDS = (
    "overfitting",
    "distribution_mismatch",
    "alpha_imbalance",
    "insufficient_capacity",
    "optimization",
)
LM_CAUSE_IDS = CAUSE_IDS  # causal-LM runs (lm_causes.toml) use the same ids
CATALOGUES = {"causes.toml": CAUSE_IDS, "lm_causes.toml": LM_CAUSE_IDS}
LIKELY = 0.5


@cache
def catalogue(name: str = "causes.toml") -> dict:
    """A shipped cause/remedy catalogue: causes.toml (classification) or lm_causes.toml (causal LMs)."""
    text = resources.files("kddoctor").joinpath(name).read_text()
    data = tomllib.loads(text)
    causes = tuple(k for k in data if k != "gap")
    assert causes == CATALOGUES[name], f"{name} causes {causes} != {CATALOGUES[name]}"
    return data


def ramp(value: float, lo: float, hi: float) -> float:
    """Linear strength in [0, 1]: 0 at lo, 1 at hi (either direction)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0.0
    if hi == lo:
        return float(value >= hi)
    return min(1.0, max(0.0, (value - lo) / (hi - lo)))


def _fmt(value: float, fmt: str) -> str:
    return {
        "pct": f"{value:.1%}",
        "pts": f"{value * 100:.1f} points",  # a difference of two shares, not a relative change
        "f3": f"{value:.3f}",
        "f2": f"{value:.2f}",
        "f0": f"{value:.0f}",
    }[fmt]


def _noisy_or(strengths: list[float]) -> float:
    p = 1.0
    for s in strengths:
        p *= 1.0 - s
    return 1.0 - p


def _value(evidence: dict[str, dict], check: str, key: str) -> float | None:
    value = evidence.get(check, {}).get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value)


def _signals(signals: list[dict], evidence: dict[str, dict], field: str) -> tuple[list[float], list[str]]:
    strengths, sentences = [], []
    for sig in signals:
        value = _value(evidence, sig["check"], sig["key"])
        if value is None:
            continue
        s = sig["weight"] * ramp(value, sig["lo"], sig["hi"])
        strengths.append(s)
        if s > 0:  # {v} is the value; {name} any text or integer evidence of the same check
            ev = evidence.get(sig["check"], {})
            words = {k: w for k, w in ev.items() if isinstance(w, str | int) and not isinstance(w, bool)}
            sentences.append((s, sig[field].format(**words, v=_fmt(value, sig["fmt"]))))
    sentences.sort(key=lambda t: -t[0])
    return strengths, [t[1] for t in sentences]


def gap_strength(evidence: dict[str, dict], name: str = "causes.toml") -> dict:
    """How big and how certain the gap is that a cause would explain (0: none, 1: clear).

    Each gap signal scores ramp(size) * ramp(z): a large gap inside the noise of a small split is no
    more a gap than a tiny, certain one.
    """
    cfg = catalogue(name)["gap"]
    best, sentences, values = 0.0, [], {}
    for sig in cfg["signals"]:
        value = _value(evidence, sig["check"], sig["key"])
        z = _value(evidence, sig["check"], sig["z_key"])
        if value is None or z is None:
            continue
        strength = ramp(value, sig["lo"], sig["hi"]) * ramp(z, cfg["z_lo"], cfg["z_hi"])
        values[sig["key"]] = {"value": value, "z": z, "strength": round(strength, 4)}
        if strength > 0:
            sentences.append((strength, sig["say"].format(v=_fmt(value, sig["fmt"]), z=f"{z:.1f}")))
        best = max(best, strength)
    sentences.sort(key=lambda t: -t[0])
    return {"strength": round(best, 4), "evidence": [s for _, s in sentences], "signals": values}


def _mechanism(mech: dict, evidence: dict[str, dict]) -> dict:
    sup, sup_say = _signals(mech.get("support", []), evidence, "say")
    con, con_say = _signals(mech.get("against", []), evidence, "why")
    support, against = _noisy_or(sup), _noisy_or(con)
    return {
        "score": support * (1.0 - against),
        "support": support,
        "against": against,
        "evidence": sup_say + [f"against: {s}" for s in con_say],
    }


def _score_cause(cid: str, cause: dict, evidence: dict[str, dict], gap: float, ctx: dict) -> dict:
    mechs = {name: _mechanism(m, evidence) for name, m in cause["mechanisms"].items()}
    name, best = max(mechs.items(), key=lambda kv: kv[1]["score"])
    score, raw = round(min(best["score"], gap), 4), round(best["score"], 4)
    sentences = best["evidence"] or ["no check reported a sign of this cause"]
    if raw > score:  # on the rounded scores: a cap below the fourth decimal changes nothing shown
        sentences = sentences + [
            f"capped at {score:.2f}: the gap it would explain is that small or that noisy"
        ]
    remedies = render_remedies(cause, name, ctx)
    return {
        "id": cid,
        "title": cause["title"],
        "score": score,
        "likely": score >= LIKELY,
        "mechanism": name,
        "mechanism_title": cause["mechanisms"][name]["title"],
        "raw_score": raw,
        "mechanisms": {n: round(m["score"], 4) for n, m in mechs.items()},
        "support": round(best["support"], 4),
        "against": round(best["against"], 4),
        "evidence": sentences,
        "remedies": [r["say"] for r in remedies],
        "remedy_code": [r["code"] for r in remedies],
        "remedy_lang": [r["lang"] for r in remedies],
    }


def rank(
    findings: list[dict], run: dict | None = None, *, name: str = "causes.toml", context: dict | None = None
) -> list[dict]:
    """Findings (results.json `checks` entries) -> every cause, scored and sorted, its remedies
    rendered against the run (`run`: results.json's run facts; the KD convention above all).

    Only checks that ran (pass/warn/fail) contribute evidence; skipped or errored checks say nothing.
    `name` picks the catalogue (lm_causes.toml for causal LMs, whose remedy `context` the caller builds).
    """
    evidence = ran(findings)
    gap = gap_strength(evidence, name)["strength"]
    cat, ctx = catalogue(name), context if context is not None else remedy_context(findings, run or {})
    ids = CATALOGUES[name]
    out = [_score_cause(cid, cat[cid], evidence, gap, ctx) for cid in ids]
    out.sort(key=lambda c: (-c["score"], -c["raw_score"], ids.index(c["id"])))
    return out


def verdict(findings: list[dict], causes: list[dict], name: str = "causes.toml", calm=None) -> dict:
    """The one-line conclusion: likely causes, an unexplained gap with its strongest lead, or healthy.

    A gap is unexplained when a gap signal the catalogue marks `verdict = true` is strong, or the
    student sits `sick_val_gap` below its teacher on val (`[gap]` of the catalogue; without either, as
    for causal LMs until their healthy pairs calibrate it, a pair is likely or healthy). `calm(gap)`
    words the healthy verdict (the task's)."""
    evidence = ran(findings)
    gap = gap_strength(evidence, name)
    cfg = catalogue(name)["gap"]
    if evidence.get("model_identity", {}).get("identical"):  # nothing to explain: nothing was distilled
        same = next(f["summary"] for f in findings if f["id"] == "model_identity")
        return {"gap": gap, "kind": "identical_models", "lead": None, "sentence": f"Setup fault: {same}"}
    likely = [c for c in causes if c["likely"]]
    val_gap = _value(evidence, "generalization_gap", "val_acc_gap") or 0.0
    flagged = {s["key"] for s in cfg["signals"] if s.get("verdict")}
    val_strength = max([v["strength"] for k, v in gap["signals"].items() if k in flagged] or [0.0])
    sick = cfg.get("sick_val_gap")
    out = {"gap": gap}
    if likely:
        top = likely[0]
        return {
            **out,
            "kind": "likely",
            "lead": top["id"],
            "sentence": f"Most likely: {top['title']} ({top['score']:.2f}; {top['mechanism_title']}) — "
            f"{top['evidence'][0]}",
        }
    if val_strength >= LIKELY or (sick is not None and val_gap >= sick):
        lead = max(causes, key=lambda c: (c["raw_score"], c["score"]))
        what = (
            gap["evidence"][0]
            if gap["evidence"]
            else f"the student is {val_gap:.1%} below its teacher on val"
        )
        because = lead["evidence"][0] if lead["raw_score"] > 0 else "no check found a sign of any cause"
        return {
            **out,
            "kind": "unexplained_gap",
            "lead": lead["id"],
            "sentence": f"Unexplained gap: {what}; the strongest lead is {lead['title']} "
            f"({lead['raw_score']:.2f}; {lead['mechanism_title']}) because {because}",
        }
    return {**out, "kind": "healthy", "lead": None, "sentence": calm(gap)}
