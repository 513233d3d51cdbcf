"""The device side: what would run on a phone.

``training`` is the plain-PyTorch local training loop (no Flower imports); ``client_app`` is the
thin Flower shell that turns a message into a training call and the result into a reply.
Nothing here imports fedsim's server side.
"""

import os

# As in fedsim/__init__.py: no Flower telemetry, set before flwr is imported.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
