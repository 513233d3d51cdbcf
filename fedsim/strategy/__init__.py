"""The strategy stack: fedsim's wrappers around the user's Flower strategy.

Every wrapper delegates to the strategy it wraps (never a subclass of it); the order in which
they stack is written once, in :func:`fedsim.strategy.stack.build_stack`, whose docstring draws
it. One module per wrapper: :mod:`~fedsim.strategy.virtual_clients`,
:mod:`~fedsim.strategy.decode_updates`, :mod:`~fedsim.strategy.ensemble_distillation`,
:mod:`~fedsim.strategy.central_dp` and :mod:`~fedsim.strategy.local_dp` (the server's half of
local DP; :mod:`clients.local_dp` is the phone's), on the base in :mod:`~fedsim.strategy.wrapper`.
"""
