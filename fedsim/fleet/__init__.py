"""The simulated fleet: who the phones are, when they are online, what a round costs them.

- :mod:`~fedsim.fleet.profile`: a hardware tier (:class:`DeviceProfile`).
- :mod:`~fedsim.fleet.fleet`: the tiers' shares over the population and each phone's speed.
- :mod:`~fedsim.fleet.availability`: when a phone is online, idle and charging.
- :mod:`~fedsim.fleet.trace`: the shape trace of a training forward in a fine-tuning mode, which
  :mod:`~fedsim.fleet.memory` and :mod:`~fedsim.fleet.flops` read (shape-only cost models of a
  training step: peak memory, FLOPs); :mod:`~fedsim.fleet.model_size` for reports.
- :mod:`~fedsim.fleet.budget`: what a phone does when its step would not fit in RAM.
- :mod:`~fedsim.fleet.exchange`: which tensors a run's phones download, upload and keep.
- :mod:`~fedsim.fleet.clock`: the simulated clock (download, compute, upload, energy).
- :mod:`~fedsim.fleet.admission`: the gates a sampled phone passes before it is sent the model.
- :mod:`~fedsim.fleet.settlement`: the replies on the clock (stragglers, over-selection).
- :mod:`~fedsim.fleet.device_simulation`: the server's thin stateful shell around the two.
"""
