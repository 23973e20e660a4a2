"""The repro scripts and the shipped claims (``repro/claims.py``, read by ``orchestrator.claims``)."""
