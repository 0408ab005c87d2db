"""Remedies rendered for the run at hand: every value a remedy may name (the user's stated convention
and the settings the remedies propose in it, the measured fixes), from the findings and the run facts
alone, so a results.json rebuilds the same remedies."""

from __future__ import annotations

from dataclasses import replace

from . import models
from .convention import KDConvention
from .convention_text import python_code, top1_support
from .presets import PRESETS


def ran(findings: list[dict]) -> dict[str, dict]:
    """Evidence of the checks that ran; skipped or errored checks say nothing."""
    return {f["id"]: f.get("evidence", {}) for f in findings if f["status"] in ("pass", "warn", "fail")}


SOFT_KD = 0.9  # the KD share an overfitting remedy aims at ("lean harder on the soft targets")
SOFT_T = 8.0  # the temperature a capacity remedy aims at ("soften the targets")
TOP_K_DROPPED = 0.05  # the teacher mass a top-k target drops before its remedy shows (lm_topk warns there)


def convention_of(run: dict) -> KDConvention:
    """The run's KD convention (results.json `run.convention`; older files: the flat alpha keys)."""
    conv = run.get("convention")
    if isinstance(conv, dict):
        return KDConvention.from_dict(conv)
    if "alpha" in run:
        return KDConvention.from_alpha(
            run["alpha"],
            run.get("alpha_on", "kd"),
            temperature=run.get("temperature", 4.0),
            t2=run.get("t2", True),
            reduction=run.get("kd_reduction", "batchmean"),
            train_batch_size=run.get("train_batch_size"),
        )
    return KDConvention()


def _target(name: str, target: KDConvention, conv: KDConvention, wanted: bool, ctx: dict) -> None:
    """A setting a remedy proposes, in the user's words; it applies only when it changes something."""
    ctx[f"{name}_setting"], ctx[f"{name}_code"], ctx[f"{name}_lang"] = (
        target.setting(),
        target.code(),
        target.code_lang,
    )
    if wanted and not target.same_setting(conv):
        ctx["applies"].add(name)


def remedy_context(findings: list[dict], run: dict) -> dict:
    """Every value a remedy template may name, from the findings and the run facts alone, and the set
    of conditions (`applies`) under which remedies with a `when` are shown."""
    conv, n = convention_of(run), int(run.get("num_classes") or 2)
    evidence = ran(findings)
    share = conv.kd_share(n)
    ctx: dict = {
        "applies": {"always"},
        "setting": conv.setting(),
        "num_classes": n,
        "temperature": conv.temperature,
        "t2_loss": conv.temperature**2,
        "student_code": models.spec_code(run.get("student", ""), n) or "",
        "setting_code": conv.code(),
        "setting_lang": conv.code_lang,
    }
    _target("more_kd", conv.to_user(SOFT_KD, conv.temperature, n), conv, share < SOFT_KD - 0.005, ctx)
    # a trainer whose loss runs at a fixed T (TRL's GKD, MiniLLM) has no temperature to soften
    soft_t = conv.temperature < SOFT_T and PRESETS[conv.preset].loss_temperature is None
    _target("higher_t", conv.to_user(share, SOFT_T, n), conv, soft_t, ctx)
    rec = evidence.get("alpha_sensitivity", {}).get("recommended")
    ctx.update(rec_setting="", rec_code="", rec_lang="python", rec_share="")
    if rec:
        ctx["applies"].add("rebalance")
        ctx.update(rec_setting=rec["setting"], rec_code=rec["code"], rec_lang=rec["code_lang"])
        ctx["rec_share"] = f"the KD term's effective share of the loss becomes {rec['alpha_kd']:.0%}"
    if conv.reduction == "mean":
        ctx["applies"].add("mean_reduction")
    # advice on a top-k target's kept mass speaks to a run whose target drops some (lm_topk's warn
    # level): not to a tail bucket, which keeps it, nor to a top k that holds nearly all of it
    dropped = evidence.get("lm_topk", {}).get("dropped_target_mass")
    # (not to TRL's top-1 support with the text's token: its trainer allows no larger k there)
    if (
        conv.top_k
        and not top1_support(conv)
        and (not conv.keeps_tail if dropped is None else dropped >= TOP_K_DROPPED)
    ):
        ctx["applies"].add("top_k")
    masks = evidence.get("lm_mask_parity", {})
    if (masks.get("empty_row_share") or 0) > 0 or (masks.get("empty_batch_share") or 0) > 0:
        ctx["applies"].add("empty_rows")
    if conv.task == "causal-lm" and conv.reduction != "token":
        ctx["applies"].add("not_per_token")
    # the mass a top-k target drops, kept as one bucket (DistillKit symmetric_uniform, verl's tail)
    tail = replace(conv, top_k_rule=conv.tail_rule) if conv.top_k else conv
    _target("tail", tail, conv, bool(conv.top_k) and not conv.keeps_tail, ctx)
    if not conv.t2 and conv.temperature > 1:
        ctx["applies"].add("t2_missing")
    if conv.kd_dtype != "float32":  # advice to compute the KD term in fp32 restates a float32 run
        ctx["applies"].add("low_precision_kd")
    ctx.update(_normalization(evidence.get("preprocessing_parity", {}), ctx["applies"]))
    ctx.update(_text_fix(evidence.get("preprocessing_parity", {}), ctx["applies"]))
    ctx.update(_fingerprint_fix(evidence.get("objective_fingerprint", {}), conv, ctx["applies"]))
    return ctx


def _fingerprint_fix(fp: dict, conv: KDConvention, applies: set) -> dict:
    """The loss the checkpoint's gradient fingerprint points to, next to the stated one."""
    out = {"fp_say": "", "fp_code": "", "fp_lang": conv.code_lang}
    # an LM's check says whether it names another objective; an image model's is read from its excess
    named = fp["named"] if "named" in fp else fp.get("stated_excess", 0) >= 0.4
    if not named or not fp.get("best_code") or fp.get("best_member") == "as stated":
        return out
    applies.add("fingerprint")
    out["fp_say"] = (
        f"Your checkpoint is stationary for the loss with {fp['best_member']}, not for the loss you state "
        f"({conv.setting()}): your code computed another loss than the one you meant. Make it compute the "
        "stated one; the two side by side:"
    )
    trained, stated, says = fp["best_code"], conv.code(), ""
    if trained == stated and fp.get("best_python"):  # the trainer's config cannot state the difference
        trained, stated, out["fp_lang"] = fp["best_python"], python_code(conv), "python"
        says = f"# {conv.preset}'s config cannot state the difference: both losses written out in PyTorch\n"
    ties = "".join(
        f"# or, as still (the fingerprint cannot tell them apart), {name}:\n{code}\n"
        for name, code in zip(fp.get("named_ties") or [], fp.get("named_ties_code") or [], strict=False)
        if not says  # a trainer config that cannot state the difference is written in PyTorch above
    )
    member = fp.get("named_member", fp["best_member"]) if ties else fp["best_member"]
    out["fp_code"] = (
        f"{says}# what the checkpoint was trained on ({member}):\n{trained}\n{ties}"
        f"# what you state:\n{stated}"
    )
    return out


TEXT_STEPS = {  # a token class one pipeline lost, and the preparation step that removes it
    "upper": "lower-cases its text",
    "whitespace": "strips whitespace or indentation",
    "indent": "strips indentation",
    "leading_space": "drops the space before words (add_prefix_space, whitespace collapsing)",
    "newline": "joins lines (collapses whitespace)",
    "digit": "drops or rewrites digits",
    "non_ascii": "folds Unicode to ASCII",
}
PREPARE_CODE = (
    "def prepare(text):  # one function for both splits: the same normalization, the same tokenizer call\n"
    "    return tokenizer(text, truncation=True, max_length=max_length)\n"
    "train_rows, val_rows = [prepare(t) for t in train_texts], [prepare(t) for t in val_texts]\n"
    "print(repr(tokenizer.decode(train_rows[0]['input_ids'])))  # one row of each, side by side\n"
    "print(repr(tokenizer.decode(val_rows[0]['input_ids'])))"
)


def _text_fix(pp: dict, applies: set) -> dict:
    """Causal LMs: the text statistic that differs between train and val, and the fix in pipeline terms."""
    out = {"text_fix_say": "", "text_fix_code": ""}
    if "teacher_train_excess" not in pp:
        return out
    rates = pp.get("class_rates", {}).get(pp.get("class_vanished_name"), {})
    if pp.get("class_vanished", 0) >= 0.85 and rates:
        side = "train" if rates["train"] < rates["val"] else "val"
        say = (
            f"'{pp['class_vanished_name']}' tokens are {rates['train']:.1%} of counted train tokens and "
            f"{rates['val']:.1%} of val: the {side} pipeline "
            f"{TEXT_STEPS.get(pp['class_vanished_name'], 'removes them')}."
        )
    elif pp.get("row_class_absent_excess", 0) >= 0.2:
        name, side = pp["row_class_absent_name"], pp["row_class_absent_side"]
        say = (
            f"{pp['row_class_absent_train']:.0%} of train rows and {pp['row_class_absent_val']:.0%} of val "
            f"rows hold no '{name}' token at all: the {side} pipeline "
            f"{TEXT_STEPS.get(name, 'removes them')} for some of its documents (one source or one branch "
            "of the code prepares them otherwise), or draws more of its documents from a source without them."
        )
    elif max(pp.get("row_start_shift", 0), pp.get("row_end_shift", 0)) >= 0.2:
        edge = "start" if pp["row_start_shift"] >= pp["row_end_shift"] else "end"
        key = f"row_{edge}"
        token = pp.get(f"{key}_text") or f"token id {pp[f'{key}_token']}"
        say = (
            f"{token} {edge}s {pp[f'{key}_train']:.0%} of train rows and "
            f"{pp[f'{key}_val']:.0%} of val rows: a BOS/EOS or a template is added on one side only."
        )
    elif pp.get("full_share_shift", 0) >= 0.3:
        say = (
            f"{pp['full_share_train']:.0%} of train rows are filled to the end and "
            f"{pp['full_share_val']:.0%} of val rows: one split is packed or truncated to another max_length."
        )
    elif pp["teacher_train_excess"] >= 0.1:
        say = (
            f"The teacher predicts the train text {pp['teacher_train_excess']:.3f} nats/token worse than the "
            "val text: the train text went through another preparation than the text it learned."
        )
    else:
        return out
    applies.add("text_fix")
    return {
        "text_fix_say": say + " Prepare both splits with one function and compare a decoded row of each.",
        "text_fix_code": PREPARE_CODE,
    }


def _normalization(pp: dict, applies: set) -> dict:
    """The measured Normalize that maps the val inputs onto train's, and the student's declared one."""
    fmt = lambda xs: "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"  # noqa: E731
    declared = (pp.get("data_config") or {}).get("student")
    out = {
        "norm_declared": f" (the student's data config: mean={declared['mean']}, std={declared['std']})"
        if declared
        else "",
        "norm_fix_say": "",
        "norm_fix_code": "",
    }
    fix = pp.get("normalization_fix")
    if fix:
        applies.add("norm_fix")
        need = f"Normalize(mean={fmt(fix['mean'])}, std={fmt(fix['std'])})"
        out["norm_fix_say"] = (
            f"The {fix['split']} split needs {need} on top of what it gets now: measured here, its inputs "
            f"arrive with mean {fmt(fix['val_mean'])}, std {fmt(fix['val_std'])}, the train inputs with "
            f"mean {fmt(fix['train_mean'])}, std {fmt(fix['train_std'])}."
        )
        out["norm_fix_code"] = (
            "from torchvision import transforms\n"
            f"val_transform = transforms.Compose([val_transform, transforms.{need}])  # {fix['split']} only"
        )
    return out


def render_remedies(cause: dict, mechanism: str, ctx: dict) -> list[dict]:
    """The cause's remedies that apply to this run, the mechanism's first, rendered against it.

    An unknown placeholder raises KeyError: the catalogue test renders every remedy, so a typo fails
    there rather than reaching a report as "?"."""
    order = cause["mechanisms"][mechanism].get("first", [])
    items = [cause["remedies"][i] for i in order] + [
        r for i, r in enumerate(cause["remedies"]) if i not in order
    ]
    out = []
    for r in items:
        if r.get("when", "always") not in ctx["applies"]:
            continue
        code = r.get("code", "").format_map(ctx)
        out.append(
            {"say": r["say"].format_map(ctx), "code": code, "lang": r.get("lang", "python").format_map(ctx)}
        )
    return out
