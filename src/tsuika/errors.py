"""The one error type for user mistakes.

Anything the person running tsuika can fix (a missing file, a bad column, an unknown label, a
wrong config key) raises `TsuikaError`. The CLI prints its message, without a traceback, and
exits with code 2. Everything else is a bug and keeps its traceback.
"""


class TsuikaError(Exception):
    """A mistake in the user's input: the message says what is wrong and how to fix it."""

    exit_code = 2


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the run folder keeps its newest checkpoint and can be resumed."""

    exit_code = 130

    def __init__(self, path: object) -> None:
        super().__init__(str(path))
        self.path = path
