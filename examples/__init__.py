"""Worked examples of extending fedsim (importable as ``examples.*`` from the repo root)."""
