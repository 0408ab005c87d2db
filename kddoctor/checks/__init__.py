"""The diagnostic battery. Importing this package registers every check, in run order."""

from . import (  # noqa: F401  (registration side effects, in run order)
    preprocessing_parity,
    mode_parity,
    generalization_gap,
    calibration,
    capacity_probe,
    alpha_sensitivity,
    covariate_shift,
)
from .base import Finding, Status, list_checks, register_check, run_check

__all__ = ["Finding", "Status", "list_checks", "register_check", "run_check"]
