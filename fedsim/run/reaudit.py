"""``python -m fedsim.run.reaudit <run dir> ...``: audit (again) a run that has finished.

Re-runs the ``audit`` option (:mod:`fedsim.privacy.audit`) from the run's saved config, its
round records (who trained) and its ``model.pt``, and rewrites its ``summary.json``. It lives
with the run, not the audit: it rebuilds the run's prepared parts, which import the audit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fedsim.models.state import load_exchangeable_state
from fedsim.report.run_log import read_records
from fedsim.run.preparation import prepare


def audit_finished_run(run_dir: Path) -> dict[str, Any]:
    """Re-run a finished run's membership audit from its saved config, rounds and model."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    prepared = prepare(cfg)
    model = prepared.builder()
    load_exchangeable_state(model, torch.load(run_dir / "model.pt", weights_only=True))
    summary = json.loads((run_dir / "summary.json").read_text())
    members = {c for record in read_records(run_dir / "metrics.jsonl") for c in record["clients"]}
    summary.update(
        prepared.audit.run(
            model=model, shards=prepared.shards, members=members,
            population=prepared.settings.population, epsilon=summary.get("epsilon"),
            delta=summary.get("delta"), out_dir=run_dir,
        )
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    for directory in sys.argv[1:]:
        result = audit_finished_run(Path(directory))
        print(directory, "mia_auc", result.get("mia_auc"))
