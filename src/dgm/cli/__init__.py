"""The ``dgm`` command line: the only place that parses arguments or prints.

One module per command (``train``, ``eval``, ``gradvar``, ``gap``, ``sample``, ``score``,
``latent``, ``report``, ``export``), each with ``add_parser(subparsers)`` and
``run(args) -> exit code``; each parses, calls the public API (:mod:`dgm.api`, :mod:`dgm.runs`)
and prints. Every fault ends in one line on standard error and the exit code of its kind
(:mod:`dgm.errors`: ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from dgm.cli import eval as eval_command
from dgm.cli import export, gap, gradvar, latent, report, sample, score, train
from dgm.errors import EXIT_CODES, INTERRUPTED, USAGE, DGMError, one_line

COMMANDS = (train, eval_command, gradvar, gap, sample, score, latent, report, export)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default ("(default: 5000)"), unless it has none (None,
    a flag's False) or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


class TopFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """The top level's help: defaults shown, the exit-code table kept as written."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (and a pointer to ``--help``), not the usage;
    every command's help shows the defaults (:class:`DefaultsFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.help is None and action.option_strings and action.default is not None:
            action.help = "(default: %(default)s)"  # argparse shows nothing for no help at all
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {one_line(message, 300)}\nsee {self.prog} --help\n")


def _epilog() -> str:
    lines = [f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()]
    return "exit codes:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dgm",
        description="Deep generative models: VB-EM, VAEs, flows, GANs, diffusion, RBMs and EBMs.",
        epilog=_epilog(),
        formatter_class=TopFormatter,
    )
    from dgm import __version__

    parser.add_argument("--version", action="version", version=f"dgm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0), or a usage error already printed in one line (2)
        return stop.code if isinstance(stop.code, int) else USAGE
    code = _run(args)
    distributed = sys.modules.get("dgm.train.distributed")  # imported only by training
    if distributed is not None:  # a torchrun worker ends here: see its end_process
        distributed.end_process(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except DGMError as err:
        print(f"dgm: error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file dgm had to read or write: name it, no traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"dgm: error: {one_line(f'{where}{err.strerror or err}')}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("dgm: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
