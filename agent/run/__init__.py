"""A tracing run: the tracer, its end and its signals.

  tracer    loads the probe, drains it, keeps what arrives, finishes the run (a RunInfo)
  kept      what a run keeps until its end: its connection rows, on disk
  memory    how much of a run can be analysed in memory (the end-of-run guard)
  control   Ctrl-C and SIGTERM, and the loop that polls the tracer
  progress  the live line while tracing
"""
