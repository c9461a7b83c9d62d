"""The `par` executable: signals are handled before the command line's slow imports begin.

Ctrl-C (SIGINT) and SIGTERM end a run the same way wherever they arrive: one line is printed
and the exit code is 130 (Ctrl-C) or 143 (SIGTERM).

During start-up nothing has been written yet, so a signal ends the process at once. Raising
there instead would interrupt a C extension's import half-way (numpy's cannot be retried in the
same process), and the run would end in an ImportError traceback rather than one line. Once the
imports are done, the signal is raised as an exception where the program is, so that every
`atomic_path` unwinds and removes its temporary file.
"""

from __future__ import annotations

import os
import signal
import sys

WORDS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _exit_during_start_up(signum, frame) -> None:
    word, code = WORDS[signum]
    os.write(2, f"{word}\n".encode())
    os._exit(code)


def main() -> None:
    for signum in WORDS:
        signal.signal(signum, _exit_during_start_up)
    from parcli.cli import app

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        app()
    except KeyboardInterrupt:
        _stop("interrupted", 130)
    except Terminated:
        _stop("terminated", 143)


def _stop(word: str, code: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the message
    try:
        print(word, file=sys.stderr, flush=True)
    finally:
        sys.exit(code)
