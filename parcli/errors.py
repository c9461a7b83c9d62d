"""How a run fails: `UserError`, one line the user can act on, and Ctrl-C or SIGTERM (exit code
130 or 143). Until torch and numpy are imported a signal ends the process at once (numpy cannot
retry an import cut half-way); then it is raised where the program is, so that cleanup runs."""

from __future__ import annotations

import functools
import os
import signal


class UserError(Exception):
    """A request or a file that cannot be used; the message says what was wrong and what to do.
    `setting` names the value at fault (`cfg_scale`); the command line shows its option."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class SettingError(UserError, ValueError):
    """A setting whose value is out of range or of the wrong form."""

    def __init__(self, setting: str, message: str):
        super().__init__(message, setting)


def at_least_one(**counts: int) -> None:
    """Refuse the first count below 1, naming its setting."""
    for setting, value in counts.items():
        if value < 1:
            raise SettingError(setting, f"must be at least 1, not {value}")


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that cleanup code runs as for Ctrl-C."""


WORDS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}

received: list[int] = []  # the signals that arrived after start-up
_starting: list[bool] = []  # [True] while `par` (not a test's runner) is starting up


def _raise(signum, frame) -> None:
    received.append(signum)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _exit_during_start_up(signum, frame) -> None:
    word, code = WORDS[signum]
    os.write(2, f"{word}\n".encode())
    os._exit(code)


def start_up() -> None:
    """From now until `loads_torch` has imported torch, a signal ends the process at once."""
    for signum in WORDS:
        signal.signal(signum, _exit_during_start_up)
    _starting[:] = [True]


def loads_torch(command):
    """`command`, with torch and numpy imported before it runs, while still starting up."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        import numpy  # noqa: F401
        import torch  # noqa: F401

        if _starting:  # from now on a signal raises where the program is (in `par`, not a test)
            for signum in WORDS:
                signal.signal(signum, _raise)
            _starting.clear()
        return command(*args, **kwargs)

    return run
