"""The console script's entry point.

Signal handlers are set before anything heavy is imported: a Ctrl-C or SIGTERM in the first
moments exits 130 with one line, like one at any other time, never with a traceback or a
bare -2/-15. Once the run has ended, signals are ignored: a late one cannot turn a
published image into a failure at interpreter exit.
"""

from __future__ import annotations

import signal
import sys

from image_creator.errors import ExitCode, Interrupted
from image_creator.system import signals


def main() -> int:
    signals.install()
    try:
        from image_creator.cli import main as run_cli  # noqa: PLC0415 - after the handlers

        return run_cli()
    except (KeyboardInterrupt, Interrupted):
        print("error: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    finally:
        for signum in signals.HANDLED:
            signal.signal(signum, signal.SIG_IGN)
