"""Expected failures: one line naming the fix, and a distinct exit code each."""


class TcpcloseError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# one class per exit code (the README's table)
class NotRoot(TcpcloseError): exit_code = 3  # noqa: E701
class BccMissing(TcpcloseError): exit_code = 4  # noqa: E701
class HeadersMissing(TcpcloseError): exit_code = 5  # noqa: E701
class TracepointMissing(TcpcloseError): exit_code = 6  # noqa: E701
class BadRecording(TcpcloseError): exit_code = 7  # noqa: E701
class CannotWrite(TcpcloseError): exit_code = 8  # noqa: E701
class PrometheusUnreadable(TcpcloseError): exit_code = 10  # noqa: E701  (9: doctor --sysctl's verdict)


class Abandoned(KeyboardInterrupt):
    """A further Ctrl-C or SIGTERM after the warning that the files are still being
    written (run.control.Stop).  A KeyboardInterrupt, not an Exception, so that no
    library's `except Exception` on the way swallows it."""
    exit_code = 130
    message = "abandoned: the files were not all written"
