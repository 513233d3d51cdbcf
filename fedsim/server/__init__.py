"""The server side: cohort sampling, the virtual-client strategy wrapper, evaluation, the round loop."""
