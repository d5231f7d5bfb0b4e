"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class FFEdgeError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    The CLI turns it into ``error: <message>`` and exit code 2, never a traceback.
    """


class MissingExtraError(FFEdgeError, ImportError):
    """A command needs an optional dependency group that is not installed.

    Also an ImportError, so tools that probe imports (pkgutil.walk_packages) skip it.
    """

    def __init__(self, extra: str, what: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install \"ffedge[{extra}]\"")
