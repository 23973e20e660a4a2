"""The shipped claims of docs/RESULTS.md as data (issue 20). They live in ``repro/``, beside the repro scripts whose
budgets they reuse, because the orchestrator never names a method's keys or metrics; ``orchestrator.claims`` imports
this module on first use, and importing it registers every part's claims. Each sentence is the claim as
docs/RESULTS.md quotes it; the numbers it reports are not here: a verdict comes from the runs.

One module per group of parts, each saying what of its parts is not registered and why:
``claims_residual`` (Part I), ``claims_search_rl`` (II to IV), ``claims_vision`` (V, VI), ``claims_generative``
(VII), ``claims_detection`` (VIII).
"""

from __future__ import annotations

from repro import claims_detection, claims_generative, claims_residual, claims_search_rl, claims_vision

__all__ = ["claims_detection", "claims_generative", "claims_residual", "claims_search_rl", "claims_vision"]
