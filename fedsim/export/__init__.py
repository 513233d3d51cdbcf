"""From a finished run to the phone: the trained student in a mobile runtime, fp32 or int8.

``python -m fedsim.export <run dir> --to onnx|executorch|litert [--int8]`` rebuilds a run's
student from its saved config and ``model.pt``, exports it with the runtime's own tools, runs the
exported file in that runtime on the run's test split, and writes the file and a JSON report
(size, accuracy, top-1 agreement with PyTorch, median latency at batch 1 on one thread) to
``<run dir>/export/``. One module per concept:

- :mod:`fedsim.export.trained_run`: the run directory -> the student, its test split and the
  calibration images.
- :mod:`fedsim.export.calibration`: which images int8 post-training quantization calibrates on.
- :mod:`fedsim.export.runtime`: what an exporter is, and the one-line errors.
- :mod:`fedsim.export.to_onnx`, :mod:`fedsim.export.to_executorch`,
  :mod:`fedsim.export.to_litert`: one exporter per runtime.
- :mod:`fedsim.export.parity`: accuracy, agreement and latency of an exported file.

Nothing here imports Ray or the simulation engine. ``docs/export.md`` has the measured tables.
"""
