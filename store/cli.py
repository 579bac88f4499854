"""What every `python -m` entry point shares: quieter libraries, the code version, user errors and exit codes.

It lives in `store/`, the bottom layer, and imports nothing from `programs`, `metrics` or `finetune` (nor DuckDB), so
the entry point of every layer can use it without an import cycle: `python -m store`, `programs.compile`,
`programs.models`, `metrics.audit`, `finetune.evaluate` and `finetune.train`.

The exit codes' table, `UserError` and `exit_code` are in `store.errors`.

A user error is a `UserError` (each layer's error classes subclass it; `exit_code` says which code it gets), raised
anywhere inside and turned into its one line and code here, at the boundary:

    @entry_point()
    def main(argv: list[str] | None = None) -> int:
        args = ArgumentParser(prog="python -m my.tool").parse_args(argv)  # a bad flag is a UserError too
        ...
        return EXIT_OK
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from store.errors import EXIT_BUDGET, EXIT_INTERRUPTED, EXIT_OK, UserError, exit_code

BUDGET_FLAGS = {"calls": "--max-calls", "cost": "--max-cost"}


def one_line(message: object) -> str:
    """A message as one line (newlines and runs of spaces folded)."""
    return " ".join(str(message).split())


def say(line: str, *, error: bool = False) -> None:
    """One line on stderr (`error: ` in red on a terminal)."""
    from rich.console import Console
    from rich.markup import escape

    text = escape(one_line(line))
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/] {text}" if error else text)


def entry_point(*, interrupted: str = "interrupted") -> Callable:
    """Decorate a `main(argv) -> int` with the shared handling: a `UserError` is its one line and its exit code, a
    budget reached is EXIT_BUDGET, Ctrl-C is the line `interrupted` and EXIT_INTERRUPTED; anything else raises (a bug,
    with its traceback). `main([...])` stays callable from Python and returns the code."""

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            from store.budget import BudgetExceeded

            try:
                code = main(argv)
            except BudgetExceeded as e:
                say(f"{e.describe(BUDGET_FLAGS)}; rerun with a higher budget to continue")
                return EXIT_BUDGET
            except KeyboardInterrupt:
                say(interrupted)
                return EXIT_INTERRUPTED
            except Exception as e:
                code = exit_code(e)
                if code is None:
                    raise
                say(one_line(e) or type(e).__name__, error=True)
                return code
            return EXIT_OK if code is None else code

        return run

    return decorate


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are user errors (one line, EXIT_USAGE) instead of a usage block and `exit(2)`; its
    subcommands' parsers are of this class too."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def quiet_libraries() -> None:
    """Our own progress bars and lines tell the story; the libraries' bars, warnings and log chatter would drown them.
    Cheap: transformers is quieted through its environment unless it is loaded already."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers|trl|peft|torch")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers loads
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a user's explicit 0 wins, as Hugging Face has it
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    for name in ("LiteLLM", "litellm", "httpx", "dspy"):
        logging.getLogger(name).setLevel(logging.ERROR)


def code_version() -> str:
    """The code's git commit (short), else the installed package's version, else 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("critic-distill")
    except PackageNotFoundError:
        return "unknown"
