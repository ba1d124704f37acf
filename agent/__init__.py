"""tcpclose: which process closes TCP connections first, and what it leaves behind."""

__version__ = "0.1.0"
