"""The Flower ServerApp: a thin shell that runs fedsim's round loop on the grid it is given.

``run_simulation`` hands the ServerApp an empty run config, so everything it needs arrives
through this factory's closure, built by :mod:`fedsim.run.simulation` in the same process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedsim.privacy.plan import PrivacyPlan
from fedsim.report.run_log import RoundRecord
from fedsim.fleet.device_simulation import DeviceSimulation
from fedsim.models.evaluation import Evaluation
from fedsim.server.rounds import RoundPlan, run_rounds


def make_server_app(
    strategy: Strategy,
    initial_arrays: ArrayRecord,
    plan: RoundPlan,
    evaluate: Callable[[ArrayRecord], Evaluation],
    on_round: Callable[[RoundRecord, ArrayRecord], None],
    privacy: PrivacyPlan,
    outcome: dict[str, str],
    devices: DeviceSimulation,
    stop: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp running ``plan`` with ``strategy`` from ``initial_arrays``.

    Why the loop ended is written to ``outcome["stopped"]`` for the summary.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome["stopped"] = run_rounds(
            grid, strategy, initial_arrays, plan, evaluate, on_round, privacy, devices, stop
        )

    return app
