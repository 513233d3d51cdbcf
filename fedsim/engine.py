"""The one place fedsim touches Flower's simulation runtime and Ray.

``flwr.simulation.run_simulation`` still works in Flower 1.42 but is deprecated; keeping the
call here means a move to its successor changes one small module. This module also owns the
process-level settings the runtime needs: quiet logs unless ``verbose``, a writable Ray temp
dir, and the Ray resources per execution slot.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedsim.config import Backend


def backend_config(backend: Backend, verbose: bool) -> dict[str, Any]:
    """Flower's Ray backend config for ``backend`` (client resources and ``ray.init`` args)."""
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "INFO" if verbose else "ERROR",
        "log_to_driver": verbose,
    }
    if backend.address:
        init_args["address"] = backend.address  # join a running cluster (`ray start --head`)
    else:
        init_args["_temp_dir"] = backend.temp_dir
        if backend.num_cpus is not None:
            init_args["num_cpus"] = backend.num_cpus
    return {
        # Flower passes client_resources to the actor's .options(). An actor whose process dies
        # (a crash, the OOM killer, faults.kill_actor_at_round) would otherwise stay dead in
        # Flower's pool and fail every later message. Ray restarts it instead and re-runs the
        # messages it lost; local training is seeded by (seed, round, client), so a re-run
        # gives the same reply and the run stays reproducible. ClientApp exceptions are not
        # retried (Ray retries system failures only).
        "client_resources": {
            "num_cpus": backend.client_cpus, "num_gpus": 0.0, "max_restarts": -1,
            "max_task_retries": -1,
        },
        "init_args": init_args,
    }


def quiet_runtime(verbose: bool) -> None:
    """Silence Flower's and Ray's console chatter unless the user asked for it."""
    # Ray warns on every start that a future release will stop overriding the GPU env var.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0" if verbose else "1")
    if not verbose:
        # Flower logs the deprecation of run_simulation and each client error with a full
        # traceback; fedsim records failures in metrics.jsonl and logs one line instead.
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def launch(
    server_app: ServerApp,
    client_app: ClientApp,
    slots: int,
    backend: Backend,
    verbose: bool = False,
) -> None:
    """Run ``server_app`` against ``slots`` supernodes executing ``client_app`` on Ray."""
    quiet_runtime(verbose)
    os.makedirs(backend.temp_dir, exist_ok=True)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=slots,
        backend_name="ray",
        backend_config=backend_config(backend, verbose),
        verbose_logging=verbose,
    )
