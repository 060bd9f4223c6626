"""The one exception the CLI reports as a single line on stderr with an exit code."""

from __future__ import annotations

EXIT_FAILURE = 1  # the cluster refused or could not do it
EXIT_USAGE = 2  # bad arguments or configuration


class Failure(Exception):
    """Stop the command: print ``flashsale: <message>`` and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
