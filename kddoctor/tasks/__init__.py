"""Task adapters: what differs between distilling a classifier and a causal LM, behind one protocol.

`api.diagnose(..., task=...)` is the one pipeline: the task's main pass -> the registry's checks for that
task -> `causes.rank` on the task's catalogue -> `causes.verdict` -> a `Diagnosis`. A task says how a
batch is read, how a model's output becomes logits, what a row of the loss is (a sample; a counted
token, grouped by position) and how it is keyed by content, how many rows count as independent, what
an evaluation can offer the checks (capabilities), and which cause catalogue ranks its findings.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import UserError

TASKS = ("classification", "causal-lm")


class Task(Protocol):
    """One kind of distillation. `evaluate` runs the main pass (and samples the probes' rows); the rest
    turns an evaluation and its findings into results.json's blocks."""

    name: str  # "classification" | "causal-lm"
    catalogue: str  # the cause/remedy catalogue file (causes.toml, lm_causes.toml)
    unit: str  # what a row of the loss is: "samples" or "tokens"

    def adapt(self, batch: object, split: str, index: int) -> object:
        """A loader's batch as the pass reads it (a clear UserError when it cannot be read)."""

    def logits(self, out: object) -> object:
        """A model's output -> its logits ([B, C]; [B, L, V])."""

    def evaluate(self, teacher, student, loaders: dict, run: object) -> object:
        """The main pass over every split -> the evaluation the checks read (`run`: api.RunContext)."""

    def run_metadata(self, ev: object) -> dict:
        """results.json `run`: versions, models, the KD convention in the user's words, sizes."""

    def metrics(self, ev: object) -> dict:
        """results.json `metrics` (with 95 % intervals at the effective number of rows)."""

    def notes(self, ev: object) -> list[str]:
        """What a reader must know to read the numbers (the train side, samples, truncations)."""

    def details(self, ev: object) -> dict:
        """Aggregated plot data for the report."""

    def remedy_context(self, findings: list[dict], run: dict) -> dict:
        """Every value a remedy may name, in the user's convention."""

    def calm_sentence(self, ev: object, findings: list[dict], causes: list[dict], gap: dict) -> str:
        """The verdict's sentence when no cause is likely and no gap stands out."""


def get_task(task: str | Task, **options) -> Task:
    """A task by name, or a Task instance as it is; `options` a task's constructor takes go to it (a
    classifier's num_classes and class_names; a causal LM takes neither)."""
    import inspect

    if not isinstance(task, str):
        return task
    if task == "classification":
        from .classification import ClassificationTask as cls
    elif task == "causal-lm":
        from .causal_lm import CausalLMTask as cls
    else:
        raise UserError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    takes = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in takes})


__all__ = ["TASKS", "Task", "get_task"]
