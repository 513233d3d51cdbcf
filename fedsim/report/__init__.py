"""Run outputs: the per-round log, the summary, plots and the progress display."""
