"""The causal-LM scenario zoo: diagnose every planted pathology and its counterfactual, both draws.

    python bench/lm_zoo.py               # draw 0 (tuning) and draw 1 (held back), markdown table
    python bench/lm_zoo.py --draw 1      # the held-back half only

Draw 0 is the half lm_causes.toml was tuned on; draw 1 is held back (other documents, another student
initialisation and batch order). Correct: a planted pair leads with its cause and it is likely; a
healthy or fixed pair has no likely cause. Models are trained once and cached ($KDDOCTOR_CACHE).
"""

from __future__ import annotations

import argparse

from kddoctor.lm import scenarios

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
}


def _signal(name: str, diag) -> str:
    default = ("generalization_gap", "val_acc_gap", "val acc gap {:.1%}")
    check, key, fmt = SIGNAL.get(name.removesuffix("_fixed"), default)
    value = next((f.evidence.get(key) for f in diag.checks if f.id == check), None)
    return fmt.format(value) if isinstance(value, int | float) else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draw", type=int, choices=scenarios.DRAWS, action="append")
    a = ap.parse_args()
    print("| scenario | draw | planted | verdict | top cause (score) | signal | correct |")
    print("|---|---|---|---|---|---|---|")
    totals = {}
    for draw in a.draw or scenarios.DRAWS:
        for scn in scenarios.SCENARIOS:
            for v in [scn] + ([scn.fixed()] if scn.fix else []):
                d = scenarios.run(v, draw)
                ok = scenarios.judge(v, d)
                totals.setdefault(draw, []).append(ok)
                top = d.causes[0]
                print(
                    f"| {v.name} | {draw} | {v.expected or '-'} | {d.verdict['kind']} | "
                    f"{top['id']} ({top['score']:.2f}) | {_signal(v.name, d)} | {'yes' if ok else 'NO'} |",
                    flush=True,
                )
    for draw, oks in totals.items():
        half = "tuning" if draw == 0 else "held back"
        print(f"draw {draw} ({half}): {sum(oks)}/{len(oks)} correct")


if __name__ == "__main__":
    main()
