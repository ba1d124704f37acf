"""Records: the one event layout and the boundary where kernel encodings become typed columns.

  layout       the Python mirror of bpf/tcpclose.h (dtypes and constants)
  decode       raw ring-buffer records and sock_diag snapshots -> one frame of events
  recording    the decoded stream as JSONL (--record) and read back (tcpclose report)
  rows         connection rows on disk (Arrow IPC stream), appended as they become final
  rundir       a run kept as a directory: run.json and connections.arrow (tcpclose report DIR)
  runinfo      RunInfo: the run's facts, what run.json and a recording's last line hold
  transitions  --transitions: every state transition, written as CSV as it arrives
"""
