"""The causal-LM scenario zoo: diagnose every planted pathology and its counterfactual, on each draw.

    python bench/lm_zoo.py                          # every family, draws 0 (tuning), 1 and 2 (held back)
    python bench/lm_zoo.py --family bytes --draw 2  # one family, one held-back draw only
    python bench/lm_zoo.py --json out.jsonl         # also one JSON line per pair (the evidence tables)

Draw 0 is the half lm_causes.toml was tuned on; draw 1 is held back (other documents, another student
initialisation and batch order). Correct: see `kddoctor.zoo.lm.judge`. Models are trained once and
cached ($KDDOCTOR_CACHE); the Hugging Face families are diagnosed through hf: directories. Draw 2 is
held back from everything: built after the catalogue was last set (2026-12-08) and run once. A fix that
rebuilds a pair already diagnosed in the draw (the same recipe, data and stated objective: `pair_key`)
repeats that diagnosis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kddoctor.zoo import lm as scenarios

SIGNAL = {  # the evidence value that carries each scenario's diagnosis
    "kd_batchmean": ("lm_reduction", "share_shift", "KD share moved {:.0%}"),
    "topk_target": ("lm_topk", "dropped_target_mass", "target drops {:.0%} of the teacher's mass"),
    "pad_in_loss": ("lm_mask_parity", "student_pad_excess", "student pad mass +{:.2%}"),
    "eval_mask_differs": ("lm_mask_parity", "mask_shift", "counted share differs by {:.0%}"),
    "tokenizer_mismatch": ("lm_vocab_parity", "teacher_nll_excess", "teacher {:+.2f} nats/token vs student"),
    "bf16_kl": ("lm_precision", "zero_fraction", "bf16 KL reads 0 on {:.0%} of tokens"),
    "overfit_few_documents": ("generalization_gap", "excess_agreement_gap", "excess agreement gap {:.1%}"),
    "too_small": ("capacity_probe", "fit_closed_fraction", "fit probe covers {:.0%} of the way"),
    "under_trained": ("alpha_sensitivity", "continue_gain_agreement", "continuing gains {:+.1%} agreement"),
    # the Hugging Face families (their doses share a signal) and the trainers' pairs
    "too_small_": ("capacity_probe", "train_gap_share", "misses {:.0%} of the teacher's gain on train"),
    "under_trained_": ("alpha_sensitivity", "continue_gain_kl_rel", "continuing cuts val KL {:.1%}"),
    "overfit_": ("generalization_gap", "excess_agreement_gap", "excess agreement gap {:.1%}"),
    "text_lower_": ("preprocessing_parity", "class_vanished", "a token class {:.0%} gone from one split"),
    "text_strip_indent_": ("preprocessing_parity", "row_start_excess", "row starts differ by {:.0%}"),
    "bos_train_only": ("preprocessing_parity", "row_start_excess", "row starts differ by {:.0%}"),
    "topk_dropped_mass": ("lm_topk", "dropped_target_mass", "target drops {:.0%} of the teacher's mass"),
    "trl_server_no_tail": ("lm_topk", "trivial_zero_share", "KD term 0 on {:.0%} of tokens"),
    "teacher_is_student": ("model_identity", "kl_val", "KL {:.3f} on val"),
}


def _signal(name: str, diag) -> str:
    default = ("generalization_gap", "val_gap_share", "misses {:.0%} of the teacher's gain on val")
    base = name.removesuffix("_fixed").split(":")[-1]
    stem = base.removesuffix("mild").removesuffix("severe")
    check, key, fmt = SIGNAL.get(base) or SIGNAL.get(stem) or default
    value = next((f.evidence.get(key) for f in diag.checks if f.id == check), None)
    return fmt.format(value) if isinstance(value, int | float) else "-"


def _row(v, draw: int, d) -> dict:
    gap = next((f.evidence for f in d.checks if f.id == "generalization_gap"), {})
    return {
        "scenario": v.name,
        "family": v.family,
        "draw": draw,
        "expected": v.expected,
        "verdict": d.verdict["kind"],
        "lead": d.verdict.get("lead"),
        "sentence": d.verdict["sentence"],
        "causes": [(c["id"], c["score"]) for c in d.causes],
        "val_agreement": d.metrics["val"]["agreement"],
        "gap": {k: v for k, v in gap.items() if isinstance(v, int | float)},
        "checks": {f.id: f.status.value for f in d.checks},
        "correct": scenarios.judge(v, d),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draw", type=int, choices=scenarios.DRAWS, action="append")
    ap.add_argument("--family", choices=list(scenarios.FAMILIES), action="append")
    ap.add_argument("--only", action="append", help="scenario name (repeatable)")
    ap.add_argument("--no-fixes", action="store_true", help="the scenarios alone, not their counterfactuals")
    ap.add_argument("--json", help="append one JSON line per pair to this file")
    ap.add_argument("--docs", help="write each pair's results.json document into this directory")
    a = ap.parse_args()
    print("| scenario | draw | planted | verdict | top cause (score) | signal | correct |")
    print("|---|---|---|---|---|---|---|")
    totals: dict = {}
    for draw in a.draw or scenarios.DRAWS:
        done: dict = {}  # pair_key -> diagnosis: a fix that rebuilds a healthy pair repeats its diagnosis
        for scn in scenarios.SCENARIOS:
            if a.family and scn.family not in a.family or a.only and scn.name not in a.only:
                continue
            for v in [scn] + ([scn.fixed()] if scn.fix and not a.no_fixes else []):
                key = scenarios.pair_key(v)
                d = done[key] = done.get(key) or scenarios.run(v, draw)
                row = _row(v, draw, d)
                totals.setdefault((scn.family, draw), []).append(row["correct"])
                top = d.causes[0]
                print(
                    f"| {v.name} | {draw} | {v.expected or '-'} | {d.verdict['kind']} | "
                    f"{top['id']} ({top['score']:.2f}) | {_signal(v.name, d)} | "
                    f"{'yes' if row['correct'] else 'NO'} |",
                    flush=True,
                )
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if a.docs:
                    out = Path(a.docs) / f"{v.name.replace(':', '--')}-d{draw}.json"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(d.to_dict()))
    for (family, draw), oks in totals.items():
        half = {0: "tuning", 1: "held back"}.get(draw, "held back, fresh")
        print(f"{family}, draw {draw} ({half}): {sum(oks)}/{len(oks)} correct")


if __name__ == "__main__":
    main()
