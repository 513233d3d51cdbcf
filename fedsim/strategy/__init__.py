"""The strategy stack: fedsim's wrappers around the user's Flower strategy.

Every wrapper delegates to the strategy it wraps (never a subclass of it); the order in which
they stack is written once, in :func:`fedsim.strategy.stack.build_stack`.
"""
