"""The `par` executable: signals are handled before the command line's slow imports begin.

Ctrl-C (SIGINT) and SIGTERM end a run the same way wherever they arrive, during start-up
included: the exception unwinds through every `atomic_path`, which removes its temporary file,
then one line is printed and the exit code is 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import signal
import sys


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        from parcli.cli import app

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
