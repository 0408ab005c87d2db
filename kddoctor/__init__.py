"""kddoctor: find out why a distilled student generalizes worse than its teacher."""

from ._version import __version__
from .api import Diagnosis, diagnose
from .checks import Finding, Status, list_checks, register_check

__all__ = ["Diagnosis", "Finding", "Status", "__version__", "diagnose", "list_checks", "register_check"]
