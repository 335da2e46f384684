"""What-if: presets under a grid of knob values, in the simulator.

- :mod:`app.whatif.sweep`: the engine (grid, runs that feed a :class:`sim.stepper.Stepper`
  batch by batch with the CPU and time model, settling, CSV); standard library and ``sim``
  only.
- :mod:`app.whatif.store`: the finished runs kept in SQLite (``OUT/sweep.sqlite``), so that
  a killed sweep resumes.
- :mod:`app.whatif.cluster`: the runs on a Dask cluster (``--scheduler``); the only module
  that imports ``distributed``, and only when asked.
- :mod:`app.whatif.report`: the self-contained HTML report (plotly), and a PNG of one plot.
- :mod:`app.whatif.cli`: ``ksmlab presets`` and ``ksmlab sweep``.

Definitions of "settled" and of the CPU model: ``docs/cpu-model.md``; resuming and Dask:
``docs/sweeps.md``.
"""
