"""A tracing run: the tracer, its end and its signals.

  tracer    loads the probe, drains it, keeps what arrives, finishes the run (a RunInfo)
  drainer   the ring buffer read on a thread of its own, whatever the steps are doing
  backlog   the records waiting for a step (in memory, on disk past 64 MiB)
  kept      what a run keeps until its end: the steps, and the connection rows on disk
  memory    how much of a run can be analysed in memory (the end-of-run guard)
  control   Ctrl-C and SIGTERM, and the loop that polls the tracer
  progress  the live line while tracing
"""
