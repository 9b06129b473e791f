"""The ``dgm`` command line: the only place that parses arguments or prints.

One module per command (``train``, ``eval``, ``gradvar``, ``gap``, ``sample``, ``score``), each with
``add_parser(subparsers)`` and ``run(args) -> exit code``; each parses, calls the public API
(:mod:`dgm.api`, :mod:`dgm.runs`) and prints.
"""

from __future__ import annotations

import argparse
import sys

from dgm.cli import eval as eval_command
from dgm.cli import gap, gradvar, sample, score, train
from dgm.errors import DGMError

COMMANDS = (train, eval_command, gradvar, gap, sample, score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgm", description="Deep generative models trained by variational Bayes."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = _run(args)
    distributed = sys.modules.get("dgm.train.distributed")  # imported only by training
    if distributed is not None:  # a torchrun worker ends here: see its end_process
        distributed.end_process(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except DGMError as err:
        print(f"dgm: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file dgm had to read or write: name it, no traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"dgm: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dgm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
