"""The `par` executable: signals are handled before the command line's slow imports begin.

Ctrl-C (SIGINT) and SIGTERM end a run the same way wherever they arrive: one line is printed
and the exit code is 130 (Ctrl-C) or 143 (SIGTERM).

During start-up nothing has been written yet, so a signal ends the process at once. Raising
there instead would interrupt a C extension's import half-way (numpy's cannot be retried in the
same process), and the run would end in an ImportError traceback rather than one line. Once the
imports are done, the signal is raised as an exception where the program is, so that every
`atomic_path` unwinds and removes its temporary file. A module imported later (PIL at the first
PNG) can be interrupted the same way and fail with some other exception; once a signal has
arrived, whatever unwinds to here is reported as that signal.
"""

from __future__ import annotations

import os
import signal
import sys

from parcli.errors import Terminated

WORDS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


received: list[int] = []  # the signals that arrived after start-up


def _raise_interrupted(signum, frame) -> None:
    received.append(signum)
    raise KeyboardInterrupt()


def _raise_terminated(signum, frame) -> None:
    received.append(signum)
    raise Terminated()


def _exit_during_start_up(signum, frame) -> None:
    word, code = WORDS[signum]
    os.write(2, f"{word}\n".encode())
    os._exit(code)


def main() -> None:
    for signum in WORDS:
        signal.signal(signum, _exit_during_start_up)
    for stream in (sys.stdout, sys.stderr):
        # A terminal that cannot encode `·` or `–` (LANG=C, PYTHONIOENCODING=ascii) shows `?`
        # rather than ending the run in a traceback after its files are written.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    from parcli.cli import app

    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        app()
    except KeyboardInterrupt:
        _stop(*WORDS[signal.SIGINT])
    except Terminated:
        _stop(*WORDS[signal.SIGTERM])
    except Exception:
        if not received:
            raise
        _stop(*WORDS[received[0]])


def _stop(word: str, code: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the message
    try:
        print(word, file=sys.stderr, flush=True)
    finally:
        sys.exit(code)


if __name__ == "__main__":
    main()
