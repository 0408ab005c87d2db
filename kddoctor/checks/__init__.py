"""The diagnostic battery. Importing this package registers every check of every task (the causal-LM
ones in `lm_*.py`; a shared concept keeps its id across tasks, e.g. `generalization_gap`)."""

from . import (  # noqa: F401  (registration side effects)
    alpha_sensitivity,
    calibration,
    capacity_probe,
    covariate_shift,
    generalization_gap,
    lm_gap,
    lm_inputs,
    lm_loss,
    lm_pipeline,
    lm_probes,
    lm_text,
    mode_parity,
    model_identity,
    objective_fingerprint,
    preprocessing_parity,
)
from .base import CHECK_ALIASES, Finding, Status, all_checks, list_checks, register_check, run_check

__all__ = ["CHECK_ALIASES", "Finding", "Status", "all_checks", "list_checks", "register_check", "run_check"]
