"""The one exception family for bad user input.

Every fault the user can fix (a config value, a data file, a strategy class) raises a subclass
of :class:`UserInputError` whose message is a single line naming what is wrong. ``run_sim.py``
prints exactly that line, without a traceback unless ``verbose=true``.
"""


class UserInputError(ValueError):
    """Bad input from the user; ``str(err)`` is one line naming the offending key or file."""


class ConfigError(UserInputError):
    """A configuration value is wrong; the message is one line naming the key."""
