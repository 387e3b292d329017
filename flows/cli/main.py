"""The entry point: logging, signals, and exit codes by kind of error (only errors about input or config are exit 2)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback

from flows.cli.common import EXIT, _env_defaults
from flows.cli.parser import build_parser
from flows.cli.server import _in_warm_worker, _prefect_api
from schemas.errors import BadInput


class _WithoutTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks out (they still reach Prefect's API and UI in full)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _console_logging(level: str) -> None:
    """--log-level for Sluice's and Prefect's console output; below debug, a failure is one line, not a traceback."""
    from prefect.logging.configuration import setup_logging

    setup_logging()  # Prefect's handlers exist from here on (a later setup is incremental: it keeps them)

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)
                                      if n.startswith(("prefect", "sluice")))]
    console = [h for logger in loggers for h in getattr(logger, "handlers", [])
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    from tasks.runtime.progress import ClearLiveLine, QuietLibraries

    for handler in console:
        if level != "debug" and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))
        wanted = [ClearLiveLine, *([QuietLibraries] if level != "debug" else [])]
        for kind in wanted:
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
    logging.getLogger("sluice").setLevel(level.upper())


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT stop a run cleanly: the readers and shard loops see the stop flag, the flow marks run.json
    `interrupted` and releases its leases, and this process exits normally (so the embedded Prefect server it
    started is stopped too). A second signal is not caught."""
    from tasks.io import interrupt

    def stop(signum, frame):
        interrupt.request_stop()
        signal.signal(signum, signal.SIG_DFL)
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def _interrupted(exc: BaseException) -> int:
    print(f"interrupted: {exc or 'SIGINT'}; the run is marked `interrupted` (sluice runs), and rerunning it with "
          "the same --run-id resumes", file=sys.stderr)
    return EXIT["interrupted"]


def _fail(code: str, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    print(f"error: {exc}", file=sys.stderr)
    return EXIT[code]


def main(argv: list[str] | None = None) -> int:
    try:
        code = _in_warm_worker(sys.argv[1:]) if argv is None else None
        if code is not None:
            return code
        code = _main(argv)
        sys.stdout.flush()  # a pipe's buffered output fails here, inside the try, not at interpreter exit
        return code
    except BrokenPipeError:  # `sluice runs | head`: the reader left; say nothing more, exit as SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not raise again
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    _env_defaults()
    args = build_parser().parse_args(argv)
    if getattr(args, "needs_prefect", False):
        try:
            _prefect_api()
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT["unexpected"]
    from pydantic import ValidationError

    from tasks.io.interrupt import Interrupted
    from tasks.io.locks import DatasetLocked
    from tasks.io.storage import StorageError
    from tasks.runtime.contracts import ContractError

    debug = args.log_level == "debug"
    _console_logging(args.log_level)
    _stop_on_signals()
    try:
        return args.fn(args)
    except BrokenPipeError:
        raise  # handled in main, before OSError below would call it a storage error
    except ContractError as exc:
        return _fail("contract", exc, debug)
    except DatasetLocked as exc:
        return _fail("locked", exc, debug)
    except (Interrupted, KeyboardInterrupt) as exc:
        return _interrupted(exc)
    except (BadInput, ValidationError) as exc:  # about input or config; any other ValueError is a bug: exit 1
        return _fail("bad input or config", exc, debug)
    except (StorageError, OSError) as exc:
        return _fail("storage", exc, debug)
    except Exception as exc:
        if not debug:
            print("(run with --log-level debug for the traceback)", file=sys.stderr)
        return _fail("unexpected", RuntimeError(f"{type(exc).__name__}: {exc}"), debug)
    except BaseException as exc:  # Prefect's TerminationSignal when it caught the SIGTERM first
        if type(exc).__name__ == "TerminationSignal":
            return _interrupted(exc)
        raise
