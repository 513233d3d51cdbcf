"""The simulated fleet: who the phones are, when they are online, what a round costs them.

- :mod:`~fedsim.fleet.profile`: a hardware tier (:class:`DeviceProfile`).
- :mod:`~fedsim.fleet.fleet`: the tiers' shares over the population and each phone's speed.
- :mod:`~fedsim.fleet.availability`: when a phone is online, idle and charging.
- :mod:`~fedsim.fleet.memory`, :mod:`~fedsim.fleet.flops`: shape-only cost models of a
  training step (peak memory, FLOPs), and :mod:`~fedsim.fleet.model_size` for reports.
- :mod:`~fedsim.fleet.budget`: what a phone does when its step would not fit in RAM.
- :mod:`~fedsim.fleet.clock`: the simulated clock (download, compute, upload, energy).
- :mod:`~fedsim.fleet.device_simulation`: the server's thin shell that admits the cohort and
  settles its replies on that clock.
"""
