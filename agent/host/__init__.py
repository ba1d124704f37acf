"""The host now, without tracing: `tcpclose states` and `tcpclose doctor`."""
