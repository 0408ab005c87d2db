"""The diagnostic battery. Importing this package registers every check, in run order."""

from . import (  # noqa: F401  (registration side effects, in run order)
    alpha_sensitivity,
    calibration,
    capacity_probe,
    covariate_shift,
    generalization_gap,
    mode_parity,
    preprocessing_parity,
)
from .base import Finding, Status, list_checks, register_check, run_check

__all__ = ["Finding", "Status", "list_checks", "register_check", "run_check"]
