"""The built-in demo (`tcpclose demo`): three pairs of processes that close connections
differently, run while tracing, so that a new user sees a real report.

  pairs     the three pairs and their stories
  workload  loopback client and server processes with a comm of their own (the live tests use them too)
"""
