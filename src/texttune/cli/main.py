"""Entry point: registers the subcommands and turns TexttuneError into one line and exit code 2."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from texttune import __version__
from texttune._malloc import reexecute_with_tcmalloc
from texttune.cli import blend, cv, export, lr_find, predict, runs, serve, train, tune, verify
from texttune.distributed import processes
from texttune.errors import TexttuneError

COMMANDS = (train, cv, tune, blend, lr_find, predict, export, serve, runs, verify)
_DISK_TROUBLE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}  # the machine's trouble, not a bug


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="texttune", description="Fine-tune transformer encoders on tables of text, and predict with them."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--version", action="version", version=f"texttune {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subcommands)
    return parser


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import transformers

    transformers.logging.set_verbosity_error()
    if quiet:  # transformers draws its own bars (loading weights) whatever TQDM_DISABLE says
        transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command, not a call from Python: run under the measured-fastest allocator
        reexecute_with_tcmalloc(sys.argv[1:])
    args = build_parser().parse_args(argv)
    others = not processes().main  # the other processes of a torchrun / accelerate job: their main one speaks
    _configure_logging(args.quiet or others)
    if others:
        logging.getLogger().setLevel(logging.ERROR)  # its warnings are theirs too; errors may be their own
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        return args.run(args) or 0
    except TexttuneError as exc:
        print(f"texttune: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _DISK_TROUBLE:
            raise
        print(
            f"texttune: error: {exc.filename or 'a file'}: {exc.strerror}; nothing half-written was kept",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("texttune: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
