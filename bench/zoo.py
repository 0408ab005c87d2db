"""The scenario zoo: diagnose every planted pathology (and its counterfactual fix) and score the ranking.

    python bench/zoo.py            # default probe budgets
    python bench/zoo.py --quick    # the budgets the test suite uses

Prints one row per scenario (expected cause, top cause, its score, runner-up) and `N/M correct`:
a planted scenario is correct when its cause ranks first; a healthy or fixed one when no cause is likely.
"""

from __future__ import annotations

import argparse
import time

from kddoctor import scenarios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-fixes", action="store_true", help="skip the counterfactual runs")
    args = ap.parse_args()
    rows, correct = [], 0
    print(
        f"{'scenario':34} {'expected':22} {'top cause':22} {'score':>5}  {'runner-up':28} {'val agr':>7} ok"
    )
    for scn in scenarios.SCENARIOS:
        variants = [scn] + ([scn.fixed()] if scn.fix and not args.no_fixes else [])
        for v in variants:
            start = time.perf_counter()
            d = scenarios.run(v, quick=args.quick)
            top, second = d.causes[0], d.causes[1]
            runner_up = f"{second['id']} {second['score']:.2f}"
            ok = (top["id"] == v.expected and top["likely"]) if v.expected else not d.likely_causes
            correct += ok
            rows.append(ok)
            print(
                f"{v.name:34} {str(v.expected or '-'):22} {top['id']:22} {top['score']:5.2f}  "
                f"{runner_up:28} {d.metrics['val']['agreement']:7.1%} "
                f"{'yes' if ok else 'NO'}  ({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    print(f"{correct}/{len(rows)} correct")


if __name__ == "__main__":
    main()
