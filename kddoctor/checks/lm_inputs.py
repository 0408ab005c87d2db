"""Do teacher and student read the same tokens, and do train and val count the same ones?"""

from __future__ import annotations

import math

from ..lm.evaluation import LMEvaluation
from ..lm.models import padding_reason, pads_past, shared_tokenizer_size
from .base import Finding, Status, grade, register_check, worst


def _differs(a: dict | None, b: dict | None, key: str) -> int | None:
    return None if not a or not b else int(a.get(key) != b.get(key))


@register_check("lm_vocab_parity", task="causal-lm", title="Tokenizer and vocabulary parity", order=12)
def lm_vocab_parity(
    ev: LMEvaluation,
    *,
    dropped_mass_fail: float = 0.01,
    padding_mass_warn: float = 0.001,
    teacher_nll_excess_fail: float = 0.05,
) -> Finding:
    """Vocabulary sizes and padded rows, the tokenizers (hash, special ids), and whether the teacher
    predicts this text worse than its own student (it saw other token ids). Padded rows pass when both
    models carry one tokenizer that ends before them and they hold under `padding_mass_warn`."""
    va = ev.splits["val"]
    tt, ts = ev.tokenizers.get("teacher"), ev.tokenizers.get("student")
    excess = va["teacher"]["loss"] - va["student"]["loss"]
    floor = None
    if ev.capture_k is not None and ev.probes is not None:
        # a top-k capture's NLL spreads the missing mass evenly, above the teacher's own: compared at its
        # floor instead, on the probes' val rows, so only a teacher worse than the capture allows fails
        floor = ev.probes.teacher_nll_floor("val")
        excess = floor["floor"] - floor["student"]
    evidence = {
        "teacher_vocab": va["teacher_vocab"],
        "student_vocab": va["student_vocab"],
        "padded_rows": abs(va["teacher_vocab"] - va["student_vocab"]),
        "teacher_dropped_mass": va["facts"]["teacher_dropped_mass"],
        "student_dropped_mass": va["facts"]["student_dropped_mass"],
        "teacher_nll_excess": excess,
        "tokenizers": {"teacher": tt, "student": ts},
    }
    if floor is not None:
        evidence["capture_nll"] = floor
    flags = {
        "tokenizer_differs": _differs(tt, ts, "hash"),
        "special_tokens_differ": _differs(tt, ts, "special_ids"),
        "chat_template_differs": _differs(tt, ts, "chat_template_hash"),
    }
    evidence.update({k: v for k, v in flags.items() if v is not None})
    dropped = max(evidence["teacher_dropped_mass"], evidence["student_dropped_mass"])
    problems = []
    if flags["tokenizer_differs"]:
        problems.append("the two tokenizers differ (vocabulary or special tokens)")
    elif flags["special_tokens_differ"] or flags["chat_template_differs"]:
        problems.append("the tokenizers' special tokens or chat templates differ")
    if dropped > dropped_mass_fail:
        problems.append(f"the compared vocabulary drops {dropped:.1%} of a model's probability mass")
    if excess > teacher_nll_excess_fail:
        floored = (
            f" even at its floor (a top-{ev.capture_k} capture: every token outside it given all the "
            f"missing mass; on {floor['tokens']:,} tokens of the sampled val rows)"
            if floor
            else ""
        )
        problems.append(
            f"the teacher predicts val text {excess:.3f} nats/token worse than its own student{floored} "
            "(it was trained on other token ids)"
        )
    sizes = f"vocabularies {va['teacher_vocab']:,} (teacher) and {va['student_vocab']:,} (student)"
    if tt is None or ts is None:
        which = "teacher" if tt is None else "student"
        sizes += f"; no {which} tokenizer to compare (hf: directories carry theirs)"
    if problems:
        return Finding("lm_vocab_parity", Status.FAIL, "; ".join(problems) + f"; {sizes}", evidence)
    if evidence["padded_rows"]:
        words = (
            f"{evidence['padded_rows']:,} padded vocabulary rows compared away "
            f"({padding_reason(ev.tokenizers, va['vocab'])}); they hold {dropped:.2%} of a model's "
            f"probability; {sizes}"
        )
        # rows no text can reach (past the one tokenizer both carry), holding next to nothing: padding
        proven = pads_past(shared_tokenizer_size(ev.tokenizers), va["vocab"]) and dropped < padding_mass_warn
        return Finding("lm_vocab_parity", Status.PASS if proven else Status.WARN, words, evidence)
    return Finding("lm_vocab_parity", Status.PASS, f"one vocabulary: {sizes}", evidence)


# a loss averaged row by row moves at least this share of its weight between the train rows: worth saying
ROW_EXPOSED = 0.20


@register_check("lm_mask_parity", task="causal-lm", title="Loss-mask parity", order=14)
def lm_mask_parity(
    ev: LMEvaluation,
    *,
    pad_excess_warn: float = 0.001,
    pad_excess_fail: float = 0.004,
    mask_shift_warn: float = 0.05,
    mask_shift_fail: float = 0.15,
    empty_rows_warn: float = 0.05,
) -> Finding:
    """Which tokens each split counts, whether the student learned to predict padding, and train rows that
    count no token (prompt-only rows, all-zero masks): a mean loss over a batch of them is 0/0 (NaN),
    and each one is a sample the student never learns from.

    empty_rows_warn: share of train rows with no counted token (a batch of them only fails)."""
    ft, fv = ev.splits["train"]["facts"], ev.splits["val"]["facts"]
    shift = abs(ft["counted_of_attended"] - fv["counted_of_attended"])
    evidence = {
        "train_counted_of_attended": ft["counted_of_attended"],
        "val_counted_of_attended": fv["counted_of_attended"],
        "mask_shift": shift,
        "uncounted_fraction": 1 - ft["counted_fraction"],
        "pad_fraction": ft["pad_fraction"],
        "prompt_fraction": ft["prompt_fraction"],
        "pad_id": fv["pad_id"],
    }
    evidence.update(
        empty_row_share=ft["empty_row_share"],
        masked_rows=ft["masked_rows"],
        empty_batches=ft["empty_batches"],
        empty_batch_share=ft["empty_batches"] / max(ft["batches"], 1),
        # what a loss averaged row by row (micro-batches of one row accumulated without
        # num_items_in_batch) would move between train rows: exposure, not a fault (README)
        row_weight_shift=ft.get("row_weight_shift", 0.0),
    )
    statuses = [
        grade(shift, mask_shift_warn, mask_shift_fail, what="the mask shift"),
        grade(ft["empty_row_share"], empty_rows_warn, math.inf, what="the empty-row share"),
        Status.FAIL if ft["empty_batches"] else Status.PASS,
    ]
    words = (
        f"train counts {ft['counted_of_attended']:.0%} of attended tokens, "
        f"val {fv['counted_of_attended']:.0%}; "
        f"a loss that ignored the masks would include {1 - ft['counted_fraction']:.0%} uncounted train "
        f"positions ({ft['pad_fraction']:.0%} padding, {ft['prompt_fraction']:.0%} prompt)"
    )
    if ft["empty_row_share"] > 0:
        words += (
            f"; {ft['empty_row_share']:.1%} of train rows count no token ({ft['masked_rows']} with an "
            f"all-zero mask), {ft['empty_batches']} of {ft['batches']} batches none at all"
        )
    if ft.get("row_weight_shift", 0.0) >= ROW_EXPOSED:
        words += (
            f"; train rows count {ft['row_tokens_min']}-{ft['row_tokens_max']} tokens: a trainer that "
            "divides each micro-batch by its own counted tokens (gradient accumulation without "
            f"num_items_in_batch) moves {ft['row_weight_shift']:.0%} of the loss's weight between rows at "
            "one row a micro-batch; if yours accumulates, divide each micro-batch's summed loss by the "
            "counted tokens of the whole accumulated batch (num_items_in_batch)"
        )
    if fv["student_pad_mass"] is not None:
        excess = fv["student_pad_mass"] - fv["teacher_pad_mass"]
        evidence.update(
            student_pad_mass=fv["student_pad_mass"],
            teacher_pad_mass=fv["teacher_pad_mass"],
            student_pad_excess=excess,
        )
        statuses.append(grade(excess, pad_excess_warn, pad_excess_fail, what="the student's pad mass"))
        words += (
            f"; on counted val tokens the student puts {fv['student_pad_mass']:.2%} on the pad token "
            f"(id {fv['pad_id']}), the teacher {fv['teacher_pad_mass']:.2%}"
        )
    return Finding("lm_mask_parity", worst(*statuses), words, evidence)
