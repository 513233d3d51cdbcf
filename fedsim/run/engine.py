"""The one place fedsim touches Flower's simulation runtime and Ray.

``flwr.simulation.run_simulation`` still works in Flower 1.42 but is deprecated; keeping the
call here means a move to its successor changes one small module. This module also owns the
process-level settings the runtime needs: quiet logs unless ``verbose``, a writable Ray temp
dir, the Ray resources per execution slot, and starting Ray itself.

fedsim starts Ray before handing over to Flower (whose backend then finds it running and
leaves it be) so that the start is cheap: no usage-stats collection (about a second of
``ray.init`` here, and nothing fedsim's users asked to send), and on a local machine no job
``runtime_env``. Flower's own start passes the driver's ``sys.path`` as a ``runtime_env``
variable, which makes Ray start fresh workers through its runtime-env agent instead of handing
the actors the workers it prestarted: about 0.8 s more before the first client call. Locally the
workers inherit ``PYTHONPATH`` from this process instead; on a cluster, whose workers do not,
fedsim passes it the way Flower does.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedsim.config import Backend


def ray_init_args(backend: Backend, verbose: bool) -> dict[str, Any]:
    """``ray.init`` arguments for ``backend``: a local Ray, or a running cluster's address."""
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "INFO" if verbose else "ERROR",
        "log_to_driver": verbose,
    }
    if backend.address:
        init_args["address"] = backend.address  # join a running cluster (`ray start --head`)
        # The cluster's workers were not started from this process: tell them where to import
        # fedsim (and the user's modules) from, as Flower would.
        init_args["runtime_env"] = {"env_vars": {"PYTHONPATH": _python_path()}}
    else:
        init_args["_temp_dir"] = backend.temp_dir
        if backend.num_cpus is not None:
            init_args["num_cpus"] = backend.num_cpus
    return init_args


def _python_path() -> str:
    """This process's ``sys.path`` (plus any ``PYTHONPATH``) as one ``PYTHONPATH`` value."""
    entries = [p for p in sys.path if p] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.pathsep.join(dict.fromkeys(e for e in entries if e))


def start_ray(backend: Backend, verbose: bool) -> None:
    """Start (or join) Ray for this run, unless this process already did."""
    if ray.is_initialized():
        return
    if not backend.address:
        os.makedirs(backend.temp_dir, exist_ok=True)
        # Ray's local processes inherit this environment: the actors import what we import.
        os.environ["PYTHONPATH"] = _python_path()
    ray.init(**ray_init_args(backend, verbose))


def backend_config(backend: Backend) -> dict[str, Any]:
    """Flower's Ray backend config: the resources and restart policy of each execution slot."""
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
    }


def quiet_runtime(verbose: bool) -> None:
    """Silence Flower's and Ray's console chatter unless the user asked for it."""
    # Ray warns on every start that a future release will stop overriding the GPU env var.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0" if verbose else "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report (and a faster start)
    # Ray records every task's events for its dashboard and state API, neither of which fedsim
    # uses; the GCS kept ~3.5 KiB a client call of them (1.6 MiB per 100 soak rounds, up to
    # its 100,000-task cap). 0 turns the recording off.
    os.environ.setdefault("RAY_task_events_report_interval_ms", "0")
    if not verbose:
        # Flower logs the deprecation of run_simulation and each client error with a full
        # traceback; fedsim records failures in metrics.jsonl and logs one line instead.
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
        warnings.filterwarnings("ignore", category=DeprecationWarning)


# What Ray's driver prints when Flower ends a simulation: Flower's shutdown runs each actor's
# `terminate` task, which exits the actor, and with fedsim's `max_task_retries=-1` (so that a
# killed actor's message is re-run) Ray reports every such exit as a task failure to retry.
ACTOR_EXIT_NOTICE = "ClientAppActor.terminate failed"


@contextlib.contextmanager
def without_actor_exit_notices() -> Iterator[None]:
    """Drop Ray's "(raylet) Task ClientAppActor.terminate failed ... retried" lines.

    Ray prints a failed task's notice from its driver's error-listener thread through
    ``ray._private.worker.print_to_stdstream``, with no switch to turn it off; the notices of
    the actors' planned exit are the only lines filtered (every other error still prints).
    """
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream

    def filtered(data: dict[str, Any], ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if ACTOR_EXIT_NOTICE not in line]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    ray_worker.print_to_stdstream = filtered
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


def launch(
    server_app: ServerApp,
    client_app: ClientApp,
    slots: int,
    backend: Backend,
    verbose: bool = False,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Run ``server_app`` against ``slots`` supernodes executing ``client_app`` on Ray.

    ``meanwhile`` runs in a thread while Ray starts, which takes 2-3 s of mostly waiting for
    its processes; it finishes (or raises) before the simulation begins. (``ray.init`` itself
    must stay on this thread: Ray's processes are tied to the thread that starts them.)
    """
    quiet_runtime(verbose)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsim-warm-up") as pool:
        warming = pool.submit(meanwhile) if meanwhile is not None else None
        start_ray(backend, verbose)
        try:
            if warming is not None:
                warming.result()
        except BaseException:
            ray.shutdown()  # Flower, which would have shut it down, never started
            raise
    # Everything imported and prepared so far (torch, Flower, Ray, the dataset: a few hundred
    # thousand objects) outlives the simulation. Freezing it keeps the garbage collections
    # during the run from walking it again and again (each full one costs ~0.3 s here); it is
    # unfrozen after, so a Hydra multirun's next job can collect what this one left.
    gc.freeze()
    try:
        with contextlib.nullcontext() if verbose else without_actor_exit_notices():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=slots,
                backend_name="ray",
                backend_config=backend_config(backend),
                verbose_logging=verbose,
            )
    finally:
        gc.unfreeze()
