"""Properties P1-P10 of DESIGN §4 as a registry, one module per family. Importing this package registers them all;
``REGISTRY`` (code -> ``Property``) and ``applicable`` are what the runner and the faces use."""
from __future__ import annotations

from ..scenario import Scenario
from . import backward_compat, batch_split, boundaries, communication, equivalence, fallbacks, grad_norm, hygiene
from .base import REGISTRY, SUBJECT, Evidence, Need, NotDecided, Property

__all__ = ["REGISTRY", "SUBJECT", "Evidence", "Need", "NotDecided", "Property", "applicable", "CODES",
           "backward_compat", "batch_split", "boundaries", "communication", "equivalence", "fallbacks", "grad_norm",
           "hygiene"]

def _order(code: str) -> tuple[int, str]:
    number, _, suffix = code[1:].partition("-")
    return int(number), suffix


CODES = tuple(sorted(REGISTRY, key=_order))


def applicable(scenario: Scenario, target: str) -> list[Property]:
    """Every registered property that applies to this scenario on this target, in the order of DESIGN §4."""
    return [REGISTRY[code] for code in CODES
            if (REGISTRY[code].clients or not scenario.is_client) and REGISTRY[code].applies(scenario, target)]
