"""The `par` executable: signals are handled before the command line's imports begin."""

from __future__ import annotations

import signal
import sys

from parcli.errors import WORDS, Terminated, received, start_up


def main() -> None:
    start_up()
    for stream in (sys.stdout, sys.stderr):
        # A terminal that cannot encode `·` or `–` (LANG=C, PYTHONIOENCODING=ascii) shows `?`
        # rather than ending the run in a traceback after its files are written.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    from parcli.cli import app

    # Commands that load torch end start-up themselves, once it is imported (`loads_torch`).
    try:
        app()
    except (Exception, KeyboardInterrupt, Terminated):
        if not received:  # Ctrl-C and SIGTERM always arrive through `received` here
            raise
        word, code = WORDS[received[0]]
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the message
        try:
            print(word, file=sys.stderr, flush=True)
        finally:
            sys.exit(code)


if __name__ == "__main__":
    main()
