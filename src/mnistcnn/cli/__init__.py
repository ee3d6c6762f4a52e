"""The `mnistcnn` command: `main(argv) -> int`. Exit codes: 0 success, 1 a MnistCnnError (one
line on stderr), 2 a usage error, 130 Ctrl-C. Log lines go to stdout, or to stderr with --json
and for serve and tune (their address and trials)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from mnistcnn.cli.parser import build_parser
from mnistcnn.errors import MnistCnnError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (2)
        return int(exc.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logger = logging.getLogger("mnistcnn")
    level = logger.level
    to_stderr = getattr(args, "json", False) or args.command in ("serve", "tune")
    # Each message bare, on the streams of this call (pytest swaps them between tests).
    lines = logging.StreamHandler(sys.stderr if to_stderr else sys.stdout)
    lines.setLevel(logging.INFO)
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        return args.handler(args)
    except MnistCnnError as exc:
        print(f"mnistcnn: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # one line for a distributed run, not N
            print("mnistcnn: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
