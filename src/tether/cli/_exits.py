"""The ``tether`` command's exit statuses (the parser's epilog explains them)."""

from __future__ import annotations

EXIT_OK = 0  # the run succeeded, or the command did what it was asked
EXIT_RUN_FAILED = 1  # the run ended in another state than SUCCEEDED
EXIT_USAGE = 2  # bad arguments, job, config or handle file (argparse uses 2 as well)
EXIT_WAIT_TIMEOUT = 3  # wait --timeout ran out; the run goes on
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our output went away (`| head`)
