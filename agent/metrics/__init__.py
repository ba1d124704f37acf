"""tcpclose agent: the figures of a run kept up to date as records arrive (figures), and
served to Prometheus (exposition)."""
