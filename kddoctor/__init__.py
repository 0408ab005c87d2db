"""kddoctor: find out why a distilled student generalizes worse than its teacher."""

from . import gate
from ._version import __version__
from .api import Diagnosis, diagnose
from .checks import Finding, Status, list_checks, register_check
from .convention import KDConvention
from .flags import resolve

__all__ = [
    "Diagnosis",
    "Finding",
    "KDConvention",
    "Status",
    "__version__",
    "diagnose",
    "gate",
    "list_checks",
    "register_check",
    "resolve",
]
