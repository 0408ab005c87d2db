"""The causal-LM zoo (tuning draw): every planted pathology is named and likely, its counterfactual
(only the planted factor fixed) and the healthy pairs are calm."""

import pytest

from kddoctor.causes import CAUSE_IDS
from kddoctor.zoo import lm as scenarios

BYTES = [s for s in scenarios.SCENARIOS if s.family == "bytes"]  # the Hugging Face families: test_lm_hf_zoo
PLANTED = [s for s in BYTES if s.expected]


def _distinct(scns: list) -> list:
    """The pairs, each student and stated objective once: a fix that rebuilds a healthy pair exactly (the
    same recipe, data and resolved objective) repeats its diagnosis, which runs by steps alone."""
    seen, out = set(), []
    for s in scns:
        key = scenarios.pair_key(s)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


CALM = _distinct([s for s in BYTES if not s.expected] + [s.fixed() for s in PLANTED])


def _cases(scns: list) -> list:
    """The scenarios, a known miss (catalogue.KNOWN_MISSES) expected to fail with its reason."""
    miss = scenarios.KNOWN_MISSES
    return [
        pytest.param(s, marks=pytest.mark.xfail(reason=miss[s.name], strict=True)) if s.name in miss else s
        for s in scns
    ]


def test_zoo_shape():
    assert len(PLANTED) >= 6 and len([s for s in BYTES if not s.expected]) >= 2
    assert {s.expected for s in PLANTED} <= set(CAUSE_IDS)
    for s in [
        s for s in scenarios.SCENARIOS if s.expected
    ]:  # a counterfactual changes the planted factor and nothing else
        fixed = s.fixed()
        assert fixed.distill != s.distill or fixed.data != s.data or fixed.stated != s.stated, s.name


@pytest.mark.slow
@pytest.mark.parametrize("scn", _cases(PLANTED), ids=lambda s: s.name)
def test_the_planted_cause_is_named(scn):
    diag = scenarios.run(scn, draw=0)
    assert scenarios.judge(scn, diag), (
        diag.verdict["sentence"],
        [(c["id"], c["score"]) for c in diag.causes],
    )


@pytest.mark.slow
@pytest.mark.parametrize("scn", _cases(CALM), ids=lambda s: s.name)
def test_healthy_and_fixed_pairs_are_calm(scn):
    diag = scenarios.run(scn, draw=0)  # calm, or the setup-fault verdict the scenario names
    assert diag.verdict["kind"] == (scn.verdict or "healthy"), [(c["id"], c["score"]) for c in diag.causes]
