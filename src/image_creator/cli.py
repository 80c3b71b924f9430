"""The command line: argparse -> Options, errors -> exit codes, logging setup. Nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from image_creator.__about__ import __version__
from image_creator.config.model import BASE_URL_TEMPLATE_ENV, DEFAULT_BASE_URL_TEMPLATE
from image_creator.errors import ExitCode, ImageCreatorError, exit_code_for, one_line
from image_creator.options import DEFAULT_CONCURRENCY, Options
from image_creator.pipeline import run
from image_creator.system import signals
from image_creator.ui.base import Reporter
from image_creator.ui.console import ConsoleReporter
from image_creator.units import UnitError, parse_size

logger = logging.getLogger("image_creator")

EPILOG = """\
exit codes: 0 success, 1 build failed, 2 host requirements missing,
3 invalid config, option or output path, 4 unreachable or invalid source, 130 interrupted.
See README.md for the config and cache-policy formats."""


def _size(value: str) -> int:
    try:
        return parse_size(value)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _concurrency(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad option; here 2 means a host problem, so options get 3."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.INVALID_CONFIG), f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="image-creator",
        description="Create an Offspot image from a config file",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config_src", metavar="CONFIG_SRC", nargs="?", help="Offspot config YAML file path or URL"
    )
    parser.add_argument(
        "output",
        metavar="OUTPUT",
        nargs="?",
        help="Where to write the image to (optional with --check)",
    )
    parser.add_argument(
        "--build-dir",
        type=Path,
        help="Directory for temporary files (image exports, spooled archives). "
        "Defaults to a temporary directory next to OUTPUT",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="Directory to use as a download cache, ruled by CACHE_DIR/policy.yaml",
    )
    parser.add_argument(
        "--show-cache", action="store_true", help="Show the cache's content and policy, then exit"
    )
    parser.add_argument(
        "-C",
        "--check",
        action="store_true",
        help="Only check inputs, URLs and sizes. Don't download or create the image",
    )
    parser.add_argument(
        "-K",
        "--keep",
        action="store_true",
        help="[DEBUG] Keep the (unmounted, detached) partial image if the build fails",
    )
    parser.add_argument(
        "-X",
        "--overwrite",
        action="store_true",
        help="Replace an existing OUTPUT (only once the new image is complete)",
    )
    parser.add_argument(
        "-T",
        "--concurrency",
        type=_concurrency,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"Number of parallel downloads and checks (default: {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--max-size",
        type=_size,
        metavar="SIZE",
        help="Refuse to build an image larger than SIZE (e.g. 64GB, 32GiB)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="Write a JSON record of the build (or of the check) to FILE, even on failure",
    )
    parser.add_argument(
        "--rootless",
        action="store_true",
        help="Build without root, loop devices or mounts (chosen by itself when not root "
        "or without loop devices)",
    )
    parser.add_argument("-D", "--debug", action="store_true", help="Verbose logs and tracebacks")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config_src and not args.show_cache:
        parser.error("CONFIG_SRC is required")
    if args.show_cache and not args.cache_dir:
        parser.error("--show-cache needs --cache-dir")
    if not args.output and not args.check and not args.show_cache:
        parser.error("OUTPUT is required unless --check or --show-cache is given")
    return Options(
        config_src=args.config_src or "",
        output=Path(args.output) if args.output else None,
        build_dir=args.build_dir,
        cache_dir=args.cache_dir,
        show_cache=args.show_cache,
        check=args.check,
        keep=args.keep,
        overwrite=args.overwrite,
        concurrency=args.concurrency,
        max_size=args.max_size,
        report=args.report,
        debug=args.debug,
        rootless=args.rootless,
        release_url_template=os.environ.get(BASE_URL_TEMPLATE_ENV) or DEFAULT_BASE_URL_TEMPLATE,
    )


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None, *, reporter: Reporter | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C so that every registered cleanup runs.
    restore_signals = signals.install()
    try:
        options = parse_options(argv)
    except BaseException:
        restore_signals()
        raise
    _setup_logging(options.debug)
    try:
        run(options, reporter or ConsoleReporter())
    except ImageCreatorError as exc:
        if options.debug:
            logger.exception("failed")
        if (text := signals.interruption_text()) is not None:
            # whatever failed, a signal stopped the run (its own exception may have been lost)
            print(f"error: {text}", file=sys.stderr)
            return int(ExitCode.INTERRUPTED)
        for line in exc.lines():
            print(f"error: {one_line(line)}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {one_line(exc.hint)}", file=sys.stderr)
        return int(exit_code_for(exc))
    except KeyboardInterrupt as exc:
        print("error: interrupted", file=sys.stderr)
        return int(exit_code_for(exc))
    except Exception as exc:  # a bug: still one line, the traceback only with --debug
        if options.debug:
            logger.exception("unexpected error")
        print(f"error: unexpected {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        print("hint: run again with --debug for the traceback, and report it", file=sys.stderr)
        return int(exit_code_for(exc))
    finally:
        restore_signals()
    return int(ExitCode.OK)
