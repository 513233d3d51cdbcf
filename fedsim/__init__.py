"""fedsim: a federated and on-device learning simulator.

The server side lives here (engine, sampler, strategy wrappers, evaluation, data, models,
reporting); the device side lives in the sibling package ``clients``.
"""

import os

# Flower posts telemetry unless told not to; it must be set before flwr is first imported, and
# every fedsim import passes through here first. Ray workers inherit it from this process.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

__version__ = "0.1.0"
