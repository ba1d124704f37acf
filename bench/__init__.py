"""The developer's bench (not installed with tcpclose): what tracing costs the traced workload.

  __main__  python -m bench: runs the modes in turns, prints the table, saves rows (--rows)
  harness   one measurement: the churn in a namespace, untraced or under a tracer
  sampling  CPU, RSS and the kernel's timing of BPF programs while a run goes on
  table     medians and paired ratios; saved rows and the table again from them (--from)
  netns     a network namespace of the bench's (or a test's) own
  churn     the short-connection churn generator
  turns     variants of the BPF program compared in turns on one churn
"""
