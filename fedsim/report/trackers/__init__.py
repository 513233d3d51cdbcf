"""Experiment trackers: the ``logger`` config group (``none``, ``tensorboard``, ``mlflow``).

A tracker is fed the run's round records as the run writes them to ``metrics.jsonl`` and, at
the end, its summary; :mod:`.base` holds the interface and the scalars every tracker logs, one
module per tool holds its writer. The tools are optional extras, imported only when chosen.
"""
