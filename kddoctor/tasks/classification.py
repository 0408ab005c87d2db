"""Image (or any [B, C]) classification: a row is a sample, grouped by class, keyed by its input."""

from __future__ import annotations

from pathlib import Path

from .. import checks as _checks  # noqa: F401  (registers the image battery)
from .._cache import TeacherCache
from .._dist import rank_world
from ..data import split_batch
from ..diagnosis import run_metadata, run_notes, split_details, split_metrics
from ..engine import as_logits, evaluate_split
from ..evaluation import Evaluation
from ..remedies import remedy_context


class ClassificationTask:
    name = "classification"
    catalogue = "causes.toml"
    unit = "samples"

    def __init__(self, num_classes: int | None = None, class_names: list[str] | None = None) -> None:
        self.num_classes, self.class_names = num_classes, class_names

    def adapt(self, batch: object, split: str, index: int):
        return split_batch(batch, split, index, num_classes=self.num_classes, class_names=self.class_names)

    def logits(self, out: object):
        return as_logits(out, self.num_classes)

    def evaluate(self, teacher, student, loaders: dict, run) -> Evaluation:
        """The main pass over every split (teacher logits from the cache where the inputs match)."""
        rank_, world = rank_world()
        cfg, num_classes, splits = run.config, self.num_classes, {}
        for name, loader in loaders.items():
            limit, explicit = cfg.split_limit(name)
            cache = run.teacher_cache
            tc = TeacherCache(Path(cache[0]), cache[1], name, limit, rank_, world) if cache else None
            splits[name] = evaluate_split(
                *run.models,
                loader,
                name=name,
                num_classes=num_classes,
                device=run.device,
                limit=limit,
                explicit_limit=explicit,
                feature_rows=cfg.budgets.feature_rows,
                cache_rows=cfg.budgets.probe_samples,
                save_logits=cfg.save_logits,
                channels_last=run.channels_last,
                bar=run.bar,
                rank=rank_,
                world=world,
                teacher_cache=tc,
                seed=cfg.seed,
                probe_augmentation=name in ("train", "train_eval"),
                class_names=self.class_names,
            )
            num_classes = num_classes or len(splits[name].stats["cls_count"])
        return Evaluation(
            teacher,
            student,
            cfg,
            run.device,
            int(num_classes),
            splits,
            self.class_names,
            run.teacher_spec,
            run.student_spec,
            progress=run.bar,
        )

    def run_metadata(self, ev: Evaluation) -> dict:
        return run_metadata(ev)

    def metrics(self, ev: Evaluation) -> dict:
        return {name: split_metrics(r) for name, r in ev.splits.items()}

    def notes(self, ev: Evaluation) -> list[str]:
        return run_notes(ev)

    def details(self, ev: Evaluation) -> dict:
        return split_details(ev)

    def logits_saved(self, ev: Evaluation) -> dict | None:
        if not ev.config.save_logits:
            return None
        return {f"{n}_{k}": v for n, r in ev.splits.items() for k, v in (r.all_logits or {}).items()}

    def remedy_context(self, findings: list[dict], run: dict) -> dict:
        return remedy_context(findings, run)

    def calm_sentence(self, ev, findings: list[dict], causes: list[dict], gap: dict) -> str:
        return "No likely cause: the student tracks its teacher on val within the noise of these splits" + (
            f" (below the bar for a verdict: {gap['evidence'][0]})" if gap["evidence"] else ""
        )
