"""What every ``tsvision`` command shares: its argument parser, and one line per error.

Each command's ``main(argv)`` is wrapped by :func:`entry_point`: an exception becomes one line on
stderr, ``tsvision COMMAND: error: <message>``, and an exit status: 2 when the command line or a
file it names is wrong (:class:`UsageError`, argparse's own errors, a missing file), 1 when the
work itself failed (a server that does not answer, an HTTP error, anything unforeseen). The
traceback is printed only with ``--debug`` (``tsvision --debug COMMAND ...`` or ``COMMAND ... --debug``).
A closed stdout (``tsvision predict ... | head -1``) ends the command quietly, as Python's docs
recommend for SIGPIPE.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import select
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional

import requests

from tsvision.serving.settings import load_labels, parse_overrides

DEBUG = False  # set by ``tsvision --debug COMMAND``; ``--debug`` on a command's own line works too


class CommandError(Exception):
    """A failure said in one line; ``status`` is the exit status (1: the work failed)."""

    status = 1

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UsageError(CommandError):
    """The command line, or a file it names, is wrong: exit status 2."""

    status = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written; every option that has a default says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or default == []
                or "default" in text or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults in ``--help``, a ``--debug`` flag and usage errors in one line (exit 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="print the traceback of an error")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def parser(prog: str, doc: Optional[str]) -> ArgumentParser:
    """The parser of ``prog`` (e.g. "tsvision archive"), its module docstring as the description."""
    return ArgumentParser(prog=prog, description=(doc or "").strip())


def existing_file(text: str) -> Path:
    """argparse ``type=``: a path that must name an existing file (said before any work starts)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def non_negative_number(text: str) -> float:
    """argparse ``type=``: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0")
    return value


def host_port(text: str) -> str:
    """argparse ``type=``: an address ``HOST:PORT`` (port 0-65535)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8001)")
    return text


def read_json(path: Path, what: str = "") -> object:
    """A JSON file's content; a missing file or one that is not JSON is a :class:`UsageError` naming it."""
    label = f"{what} {path}".strip()
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{label} is a folder, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{label} is not JSON: {error}") from error


def writable_folder(path: Path, flag: str) -> Path:
    """``path`` can be written to, or created: a :class:`UsageError` saying why not (nothing is created)."""
    path = Path(path)
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {'the folder' if existing == path else existing} is not writable")
    return path


def labels_file(path: Path, flag: str = "--labels") -> list:
    """The class names in ``path`` (``load_labels``); a file that is not a labels file is a :class:`UsageError`."""
    try:
        return load_labels(path)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise UsageError(f"{flag} {path} is not a labels file (a JSON list, a JSON {{index: name}} map, or .txt "
                         f"with one name per line): {one_line(str(error))}") from error


def key_values(pairs: List[str]) -> dict:
    """``--set``/``--model-arg`` pairs (``parse_overrides``); a pair without ``=`` is a :class:`UsageError`."""
    try:
        return parse_overrides(pairs)
    except ValueError as error:
        raise UsageError(str(error)) from None


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe(error: BaseException) -> str:
    """One line saying what went wrong, without the traceback."""
    if isinstance(error, CommandError):
        return one_line(str(error))
    if type(error).__module__.startswith("requests"):
        return one_line(describe_request_error(error))
    if isinstance(error, OSError) and error.filename is not None:
        reason = {FileNotFoundError: "no such file or folder", PermissionError: "permission denied",
                  IsADirectoryError: "is a folder, not a file"}.get(type(error), error.strerror or str(error))
        return f"{error.filename}: {reason}"
    if callable(getattr(error, "code", None)) and callable(getattr(error, "details", None)):  # grpc.RpcError
        return one_line(f"gRPC {error.code().name}: {error.details()}")
    return one_line(f"{type(error).__name__}: {error}")


def exit_status(error: BaseException) -> int:
    """2 for a usage error (the command line or a file it names), 1 for a failure."""
    if isinstance(error, CommandError):
        return error.status
    return 2 if bad_url(error) else 1


def bad_url(error: BaseException) -> bool:
    """requests refused the URL itself (a usage error): no scheme, a port out of range, ..."""
    return type(error).__name__ in ("InvalidURL", "InvalidSchema",
                                    "MissingSchema") and type(error).__module__.startswith("requests")


def describe_request_error(error: BaseException) -> str:
    """requests' exceptions carry pages of urllib3 text: the URL tried and the reason."""
    url = getattr(getattr(error, "request", None), "url", None) or "the server"
    if bad_url(error):
        return f"not a usable URL: {error} (expected e.g. http://127.0.0.1:8080)"
    if isinstance(error, requests.Timeout):
        return f"no answer from {url} in time ({type(error).__name__})"
    if isinstance(error, requests.exceptions.SSLError):
        found = re.search(r"\[SSL[^\]]*\] ([^(')\"]+)", str(error))
        return f"cannot reach {url}: TLS: {found.group(1).strip() if found else 'handshake failed'}"
    if isinstance(error, requests.ConnectionError):
        found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
        reason = found.group(1).strip() if found else "the connection failed"
        return f"cannot reach {url}: {reason} (is the server running there?)"
    return f"{url}: {type(error).__name__}: {error}"


def run(prog: str, main: Callable[[List[str]], Optional[int]], argv: List[str]) -> int:
    """``main(argv)``'s exit status; any error becomes one line on stderr (and a traceback with --debug)."""
    debug = DEBUG or "--debug" in argv
    try:
        status = int(main(argv) or 0)
        sys.stdout.flush()  # a closed pipe shows here, when the output was buffered
        return status
    except BrokenPipeError as error:
        if stdout_closed():  # the reader went away (| head): quietly, as Python's docs recommend for SIGPIPE
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        message, status = describe(error), 1  # another pipe or socket
        if debug:
            traceback.print_exc()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        if not isinstance(exit_.code, str):  # argparse (--help, a usage error) or an explicit status
            raise
        message, status = one_line(exit_.code), 2  # SystemExit("message"): a usage message from a helper
        if debug:
            traceback.print_exc()
    except Exception as error:  # noqa: BLE001 - every failure ends in one line
        message, status = describe(error), exit_status(error)
        if debug:
            traceback.print_exc()
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def stdout_closed() -> bool:
    """True when stdout is a pipe (or socket) whose reader has gone: poll reports an error on it."""
    try:
        descriptor = sys.stdout.fileno()
        poller = select.poll()
        poller.register(descriptor, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            return True
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (AttributeError, ValueError, OSError):  # no real descriptor (a test's capture)
        pass
    return False


def entry_point(prog: str) -> Callable:
    """Decorate a command's ``main(argv=None) -> int`` so that every error is one line (see :func:`run`)."""

    def wrap(main: Callable[[Optional[List[str]]], Optional[int]]) -> Callable[[Optional[List[str]]], int]:
        @functools.wraps(main)
        def wrapped(argv: Optional[List[str]] = None) -> int:
            return run(prog, main, list(sys.argv[1:] if argv is None else argv))

        return wrapped

    return wrap
