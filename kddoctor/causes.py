"""Rank the causes: a pure function of the findings and the catalogue in causes.toml."""

from __future__ import annotations

import math
import string
import tomllib
from functools import cache
from importlib import resources

CAUSE_IDS = (
    "overfitting",
    "distribution_mismatch",
    "alpha_imbalance",
    "insufficient_capacity",
    "optimization",
)
LIKELY = 0.5


@cache
def catalogue() -> dict:
    """The shipped cause/remedy catalogue."""
    text = resources.files("kddoctor").joinpath("causes.toml").read_text()
    data = tomllib.loads(text)
    assert tuple(data) == CAUSE_IDS, f"catalogue causes {tuple(data)} != {CAUSE_IDS}"
    return data


def ramp(value: float, lo: float, hi: float) -> float:
    """Linear strength in [0, 1]: 0 at lo, 1 at hi (either direction)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0.0
    if hi == lo:
        return float(value >= hi)
    return min(1.0, max(0.0, (value - lo) / (hi - lo)))


def _fmt(value: float, fmt: str) -> str:
    return {"pct": f"{value:.1%}", "f3": f"{value:.3f}", "f2": f"{value:.2f}", "f0": f"{value:.0f}"}[fmt]


def _noisy_or(strengths: list[float]) -> float:
    p = 1.0
    for s in strengths:
        p *= 1.0 - s
    return 1.0 - p


def _signals(signals: list[dict], evidence: dict[str, dict], field: str) -> tuple[list[float], list[str]]:
    strengths, sentences = [], []
    for sig in signals:
        value = evidence.get(sig["check"], {}).get(sig["key"])
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        s = sig["weight"] * ramp(float(value), sig["lo"], sig["hi"])
        strengths.append(s)
        if s > 0:
            sentences.append((s, sig[field].format(v=_fmt(float(value), sig["fmt"]))))
    sentences.sort(key=lambda t: -t[0])
    return strengths, [t[1] for t in sentences]


class _Blank(string.Formatter):
    def get_value(self, key, args, kwargs):
        return kwargs.get(key, "?") if isinstance(key, str) else super().get_value(key, args, kwargs)


def rank(findings: list[dict], context: dict | None = None) -> list[dict]:
    """Findings (results.json `checks` entries) -> every cause, scored and sorted.

    Only checks that ran (pass/warn/fail) contribute evidence; skipped or errored checks say nothing.
    """
    evidence = {f["id"]: f.get("evidence", {}) for f in findings if f["status"] in ("pass", "warn", "fail")}
    ctx = context or {}
    out = []
    for cid, cause in catalogue().items():
        sup, sup_say = _signals(cause["support"], evidence, "say")
        con, con_say = _signals(cause["against"], evidence, "why")
        support, against = _noisy_or(sup), _noisy_or(con)
        score = round(support * (1.0 - against), 4)
        sentences = sup_say + [f"against: {s}" for s in con_say]
        if not sentences:
            sentences = ["no check reported a sign of this cause"]
        fmt = _Blank()
        remedies = [fmt.format(r["say"], **ctx) for r in cause["remedies"]]
        codes = [fmt.format(r.get("code", ""), **ctx) for r in cause["remedies"]]
        out.append(
            {
                "id": cid,
                "title": cause["title"],
                "score": score,
                "likely": score >= LIKELY,
                "support": round(support, 4),
                "against": round(against, 4),
                "evidence": sentences,
                "remedies": remedies,
                "remedy_code": codes,
            }
        )
    out.sort(key=lambda c: (-c["score"], CAUSE_IDS.index(c["id"])))
    return out
