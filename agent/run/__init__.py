"""A tracing run: the tracer, its end and its signals.

  tracer    loads the probe, drains it, keeps what arrives, finishes the run (a RunInfo)
  owners    what the tracer learns of each owner from /proc: its namespace, name, cgroup
  drainer   the ring buffer read on a thread of its own, whatever the steps are doing
  backlog   the records waiting for a step (in memory, on disk past 16 MiB)
  kept      what a run keeps until its end: the steps, the connection rows on disk, the figures
  writer_thread  the rows' files written on a thread of their own at the end, beside the next rows
  memory    the heap's free pages, and the BPF compiler's once loaded, handed back to the system
  control   Ctrl-C and SIGTERM, and the loop that polls the tracer
  serving   the agent's loop: figures, snapshots for the scrapes, agent -o's periods
  replay    a recording made into rows through the same stream
  progress  the live line while tracing
"""
