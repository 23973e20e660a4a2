"""Search-space files (YAML) read by ``python -m orchestrator.sweep NAME``; see orchestrator/spaces.py."""
