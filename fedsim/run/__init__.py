"""One run: preparation (checked before Ray starts), the engine, checkpoints and resume."""
