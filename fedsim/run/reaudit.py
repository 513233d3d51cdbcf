"""``python -m fedsim.run.reaudit <run dir> ...``: audit (again) a run that has finished.

Re-runs the ``audit`` option (:mod:`fedsim.privacy.audit`) from the run's saved config, its
round records (who trained) and its ``model.pt``, and rewrites its ``summary.json``. It lives
with the run, not the audit: it rebuilds the run's prepared parts, which import the audit. A
summary written before ``epsilon_simulated`` existed gets it from the run's checkpoint (the
rounds its accountant counted), so the audit is held to the simulated phones' epsilon.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fedsim.report.run_log import read_records
from fedsim.run import checkpoint
from fedsim.run.preparation import Prepared, prepare
from fedsim.run.reports import audit_final_model


def simulated_epsilon(prepared: Prepared, run_dir: Path, summary: dict[str, Any]) -> float | None:
    """``epsilon_simulated`` of a finished run, recomputed when its summary predates it."""
    if "epsilon_simulated" in summary or prepared.privacy.accountant is None:
        return summary.get("epsilon_simulated", summary.get("epsilon"))
    saved = checkpoint.load(run_dir)
    if saved is None or saved.content.get("accountant") is None:
        return summary.get("epsilon")  # nothing says how many rounds were accounted
    rounds = int(saved.content["accountant"]["rounds"])
    return prepared.privacy.running(None, rounds=rounds).epsilon_simulated()


def audit_finished_run(run_dir: Path) -> dict[str, Any]:
    """Re-run a finished run's membership audit from its saved config, rounds and model."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    prepared = prepare(cfg)
    state_dict = torch.load(run_dir / "model.pt", weights_only=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["epsilon_simulated"] = simulated_epsilon(prepared, run_dir, summary)
    members = {c for record in read_records(run_dir / "metrics.jsonl") for c in record["clients"]}
    summary.update(audit_final_model(prepared, members, state_dict, summary, run_dir))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    for directory in sys.argv[1:]:
        result = audit_finished_run(Path(directory))
        print(directory, "mia_auc", result.get("mia_auc"), "ci", result.get("mia_auc_ci"))
