"""What the events of a run mean: pure pandas, no kernel, no clock.

  rules      how a socket life ended, and what that leaves (one place for each rule)
  lives      socket lives -> connection rows (role, initiator, CLOSE_WAIT, TIME_WAIT)
  stream     the same rows made as the records arrive, each once nothing can change it
  held       the lives a stream holds until then
  ends       the timewait ends it holds, and how each held life's TIME_WAIT ended so far
  reuses     whether a client took over a TIME_WAIT cancelled with no connect() seen
  listeners  whose are a listener's children where only the listener names them
  timewait   how each TIME_WAIT ended and how long it lived
  tally      the figures, kept as the rows are made: what every table is made from
  grouped    counts, extremes, sketches and busiest bins per group of rows
  columns    a batch of rows as the figures read it: arrays, each key factorized once
  sketches   percentiles that stream (DDSketch)
  quanta     counts of moments per short stretch of time
  occupancy  what is alive over time: the host's and each destination's
  processes  per-process counts and TIME_WAIT figures
  churn      rates, durations, peers and the timeline
  ports      ephemeral-port pressure per destination
  reconcile  the kernel's TcpExt counters beside tcpclose's own counts
  accounting what a run could not see, from its counters
  findings   what it all means, in plain words
  pipeline   analyse(): a run's figures -> everything the outputs show
"""
