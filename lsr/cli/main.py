"""``lsr <verb>``: one argparse front door; each verb lives in its own module in lsr.cli.

A verb module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported lazily so ``lsr --help`` stays fast and a verb's heavy imports load only when used.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import logging
import os
import shlex
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import NoReturn

from lsr.files import MachineStateError, arrow_conversions_ready, stop_signals

VERBS = ("encode", "index", "upsert", "delete", "search", "doc", "eval", "beir", "tune", "train", "serve", "query", "verify",
         "repair")


def _verb_module(verb: str):
    return importlib.import_module(f"lsr.cli.{verb}")


class OneLineErrors(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line with a guess at what was meant: its usage block (ten lines
    for `lsr index`) came first and buried the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{self._guess(message)}; see {self.prog} --help\n")

    def _guess(self, message: str) -> str:
        """" (did you mean X?)" for a misspelt verb or flag, else ""."""
        if "invalid choice: '" in message:
            typed, choices = message.split("invalid choice: '", 1)[1].split("'", 1)[0], VERBS
        elif message.startswith("unrecognized arguments: "):
            if {"-v", "--verbose"} & set(message.split()[2:]):  # a flag of lsr itself, typed after the verb
                return " (-v goes before the verb: lsr -v VERB ...)"
            typed = next((word.split("=", 1)[0] for word in message.split()[2:] if word.startswith("--")), "")
            choices = [option for option in self._option_string_actions if option.startswith("--")]
        else:
            return ""
        close = difflib.get_close_matches(typed, choices, n=1, cutoff=0.6)
        return f" (did you mean {close[0]}?)" if typed and close else ""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="lsr",
        description="Learned sparse retrieval: encode, index, search, serve, evaluate and train SPLADE models.",
        epilog="Start: lsr index ../shared/data/beir/scifact.tar.gz runs/scifact, then lsr search runs/scifact "
               "\"your question\". Exit status: 0 done; 1 the machine's state (a server down, a collection another "
               "process writes, a full disk: retry), or damage `lsr verify` found, or no id `lsr delete` could "
               "delete; 2 a bad input (fix it); 130 / 143 stopped by Ctrl-C / SIGTERM, checkpoints kept. Each verb "
               "has --help; README.md and docs/cli.md (every flag and default) have the rest.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging from every library (gRPC's core included), and an error's traceback "
                             "before its line, for a bug report")
    parser.add_argument("-V", "--version", action=_PrintVersion, help="print lsr's version (quote it in a bug report) "
                        "and exit")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        try:
            module = _verb_module(verb)
        except ModuleNotFoundError as exc:
            if exc.name != f"lsr.cli.{verb}":
                raise
            continue
        p = sub.add_parser(verb, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


class _PrintVersion(argparse.Action):
    """The version pip installed (pyproject.toml's), looked up only when asked: the lookup reads every installed
    package's metadata (20 ms), which each command's start would pay."""

    def __init__(self, option_strings: list[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("lsr")
        except PackageNotFoundError:
            installed = "(not installed: run from a checkout)"
        print(f"lsr {installed}")  # to stdout, as argparse's own version action does
        parser.exit()


def parse(argv: list[str]) -> argparse.Namespace:
    """The verb's arguments; an unknown flag is reported by the verb's parser (``lsr index: error: ...``, with a
    guess among its flags), not by the top level's, which knows only the verbs."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def flags_given(args: argparse.Namespace, *dests: str) -> list[str]:
    """The flags among ``dests`` typed, or set to other than their defaults, as typed (``--shard-cpus``): a verb
    refuses those that would do nothing the way it was called, rather than ignore them (``--model splade-tiny``, the
    default, typed beside ``--endpoint`` too)."""
    typed = _typed_dests(args)
    return [f"--{dest.replace('_', '-')}" for dest in dests
            if dest in typed or getattr(args, dest) != args._parser.get_default(dest)]


def _typed_dests(args: argparse.Namespace) -> set[str]:
    """The dests of the verb's flags in the command as typed, abbreviations (``--mod``) and ``--flag=value`` too."""
    options = args._parser._option_string_actions
    typed = set()
    for token in getattr(args, "_argv", ()):
        if token == "--":
            break
        name = token.split("=", 1)[0]
        matches = [option for option in options if option == name] or [
            option for option in options if name.startswith("--") and len(name) > 2 and option.startswith(name)]
        if len({options[option].dest for option in matches}) == 1:
            typed.add(options[matches[0]].dest)
    return typed


def path_argument(text: str) -> str:
    """A file or folder given as an argument, ``~`` expanded: "" was read as the current folder (`lsr train data.jsonl
    ""` tried to write its model into ".", `lsr index ""` read every dataset below it), and `--output=~/run.trec`,
    which no shell expands, made a folder named "~" where some flags took it as the home folder."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; name a file or folder")
    return os.path.expanduser(text)


def name_argument(text: str) -> str:
    """A name a flag takes (a model, a field, a run tag): "" was taken as the flag left out (`--model ""` indexed with
    splade-tiny, `--dense ""` built no dense leg and recorded "" as its model, `--tag ""` wrote the default tag)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name")
    return text


def fields_argument(text: str) -> tuple[str, ...]:
    """``--fields title,text`` as names; none at all is refused (`lsr upsert --fields ""` used the build's)."""
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    if not fields:
        raise argparse.ArgumentTypeError("--fields needs at least one field name, e.g. title,text")
    return fields


def shell_word(path: str | Path) -> str:
    """``path`` as a word of a command a hint suggests: quoted for the shell, and behind ./ where it starts with a dash
    (`try: lsr search -col2` was read as a flag)."""
    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def folder_argument(text: str) -> Path:
    """``path_argument`` as a Path."""
    return Path(path_argument(text))


def refuse_unused(flags: list[str], why: str) -> None:
    """One line naming ``flags`` (those ``flags_given`` found) and ``why`` they do nothing here."""
    if flags:
        raise ValueError(f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} nothing here: {why}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, or SIGHUP (a closed terminal or ssh session: it left partial ``.tmp`` files and no resume hint),
    raised where Ctrl-C's KeyboardInterrupt would be: every verb that stops cleanly on Ctrl-C (checkpoint, resume
    hint) does the same when a scheduler or `kill` asks it to stop. ``lsr serve`` and ``lsr train`` handle the signal
    themselves (drain; finish the step and checkpoint)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


RESEND_AFTER_S = 0.05  # a swallowed signal's second delivery: past the hook, well under a person's patience


_RAISED: list[int] = []  # each SIGINT / SIGTERM raised as an exception since the verb began, until one is handled


def _raise_terminated(signum, _frame) -> None:
    _RAISED.append(signum)
    raise Terminated(signum)


def _raise_interrupt(_signum, _frame) -> None:
    _RAISED.append(signal.SIGINT)
    raise KeyboardInterrupt


def interrupt_handled() -> None:
    """A verb that takes Ctrl-C as an instruction (the interactive prompt drops the typed line) says so here."""
    _RAISED.clear()


def _stop_if_swallowed() -> None:
    """Raise a signal's exception again when the verb ended as if none had come: a library dropped it (pyarrow's
    first conversion of an array to numpy imports pandas from C++ and discards what the import raised), and a
    `lsr verify` stopped by Ctrl-C printed "intact" and exited 0."""
    if _RAISED:
        raise KeyboardInterrupt if _RAISED[-1] == signal.SIGINT else Terminated(_RAISED[-1])


def _redeliver_swallowed_interrupts(previous_hook):
    """An unraisable-exception hook that sends a swallowed SIGTERM or Ctrl-C again.

    A signal's exception is raised in whatever the main thread runs at the time; inside a finalizer (Ray's
    ``ActorHandle.__del__``, seen in CI) Python prints "Exception ignored" and goes on, so a build that was asked
    to stop ran to its end. Sent again a moment later, the signal is handled once the finalizer and this hook have
    returned (one sent at once would be handled, and swallowed, in this hook; one that lands in another finalizer
    comes back here and goes round again).
    """
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            stop = unraisable.exc_value
            signum = stop.signum if isinstance(stop, Terminated) else signal.SIGINT
            resend = threading.Timer(RESEND_AFTER_S, os.kill, (os.getpid(), signum))
            resend.daemon = True
            resend.start()
            return
        previous_hook(unraisable)

    return hook


@contextlib.contextmanager
def _signals_as_exceptions():
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    _RAISED.clear()
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated)}
    if signal.SIGHUP in stop_signals():
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell ignores it (background)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_interrupt)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _redeliver_swallowed_interrupts(sys.unraisablehook)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOGGING_VERBS = ("serve", "train")  # long runs whose log lines keep their time (a server's are its log)


class OwnLinesBare(logging.Formatter):
    """lsr's log lines in a one-shot verb read as its other messages do ("warning: ..."), not as a server's log with
    a time and a logger name; other libraries' lines keep theirs, which say whose they are."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name != "lsr" and not record.name.startswith("lsr.") or record.exc_info:
            return super().format(record)
        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return prefix + record.getMessage()


def _open_closed_standard_streams() -> list[int]:
    """Give each closed standard stream (``2>&-``) /dev/null, and return their numbers. Python leaves ``sys.stderr``
    None there, and every verb that reached a progress bar failed with exit 1 and no word (``lsr serve`` answered
    each search INTERNAL); an unfilled descriptor would also be the next file opened."""
    closed = []
    for fd, mode in ((0, "r"), (1, "w"), (2, "w")):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            os.dup2(null := os.open(os.devnull, os.O_RDWR), fd)
            if null != fd:
                os.close(null)
            setattr(sys, ("stdin", "stdout", "stderr")[fd], open(fd, mode, closefd=False))
    return closed


def _flush_failed() -> int | None:
    """Flush standard output where its errors are caught: the exit code of a failed flush, or None."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        return _output_failed(exc)
    return None


def _output_failed(exc: OSError) -> int:
    """The exit code of a failed write to standard output: 141, quietly, for a reader gone (`lsr --version | true`
    printed a traceback), 1, said, for a full disk (`> /dev/full` printed one). Python's exit-time flush of what is
    left would raise again, so standard output becomes /dev/null."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(exc, BrokenPipeError):
        return 128 + signal.SIGPIPE
    print(f"lsr: error: cannot write to standard output: {exc.strerror or exc}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    closed = _open_closed_standard_streams()
    try:
        args = parse(argv)
    except SystemExit as done:  # --help, --version or a usage error: argparse's exit flushed its text unchecked
        raise SystemExit(_flush_failed() or done.code) from None
    except OSError as exc:  # --version's line
        raise SystemExit(_output_failed(exc)) from None
    if 1 in closed and args.verb != "serve":  # `cat >&-` fails too: what the verb prints would be lost unsaid
        print(f"lsr {args.verb}: error: standard output is closed; redirect it to a file or /dev/null",
              file=sys.stderr)
        return 2
    args._argv = argv  # the command as typed, for hints that repeat it (`lsr index` after Ctrl-C)
    # gRPC's core logs at INFO to stderr (a TLS handshake to a plain server: a line a second) beside our one-line
    # errors; before grpc loads, keep it to its errors unless -v or the user set it
    os.environ.setdefault("GRPC_VERBOSITY", "INFO" if args.verbose else "ERROR")
    # our INFO lines, and other libraries' warnings only: torch's exit-time INFO lines (FakeTensor cache stats) came
    # after a Ctrl-C's message, and matplotlib's "generated new fontManager" in the README's first run
    from lsr.ingest.progress import BarSafeHandler

    handler = BarSafeHandler(sys.stderr)
    if args.verb not in LOGGING_VERBS and not args.verbose:
        handler.setFormatter(OwnLinesBare(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format=LOG_FORMAT,
                        handlers=[handler])
    quiet = getattr(args, "quiet", False)  # the verb's --quiet: its warnings only
    logging.getLogger("lsr").setLevel(logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO)
    try:
        with _signals_as_exceptions():
            if args.verb not in ("query", "eval"):  # the verbs that read Parquet (the others need no pandas)
                arrow_conversions_ready()
            code = int(args._run(args) or 0)
            if code == 0:  # a verb that caught the signal returns 130 or 143 itself
                _stop_if_swallowed()
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
        return code
    except Terminated as stop:
        print("terminated" if stop.signum == signal.SIGTERM else "hung up (SIGHUP)", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:  # the reader went away (`lsr search ... | head`): stop quietly, as `cat` does
        return _output_failed(exc)
    except MachineStateError as exc:  # the machine's state, not the input: the same command can work later
        return _failed(args, exc, str(exc), 1)
    except MemoryError as exc:  # a ulimit -v or a small container: a traceback out of safetensors or faiss
        return _failed(args, exc, "out of memory; free some, or give this process more (ulimit -v, the container's "
                                  "limit)", 1)
    except UnicodeEncodeError as exc:
        if _same_codec(exc.encoding, sys.stdout.encoding):  # PYTHONIOENCODING=ascii: exit 2, "bad input", unnamed
            shown = exc.object[exc.start:exc.end]
            return _failed(args, exc, f"standard output's encoding, {sys.stdout.encoding}, cannot hold {shown!r}; "
                                      "set PYTHONIOENCODING=utf-8", 1)
        return _failed(args, exc, _error_text(exc), 2)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, RuntimeError) as exc:
        # User-facing errors: one line naming what is wrong, no stack trace.
        return _failed(args, exc, _error_text(exc), 2)
    except OSError as exc:  # the machine's, not the input's: a read-only folder, a full disk, a folder for a file
        return _failed(args, exc, _error_text(exc), 1)


def _same_codec(first: str, second: str | None) -> bool:
    import codecs

    try:
        return second is not None and codecs.lookup(first).name == codecs.lookup(second).name
    except LookupError:
        return False


def _failed(args: argparse.Namespace, exc: BaseException, text: str, code: int) -> int:
    """The error's one line, and ``code``; with -v its traceback first (-v printed nothing more than the line)."""
    if args.verbose:
        traceback.print_exception(exc)
    one_line = text.replace("\r", "\\r").replace("\n", "\\n")  # a path holding a newline ran it onto a second
    print(f"lsr {args.verb}: error: {one_line}", file=sys.stderr)
    return code


def _error_text(exc: BaseException) -> str:
    """``exc`` as its line says it: an OS error the system raised as "[Errno 30] Read-only file system: 'x'" reads
    "x: Read-only file system", as the errors lsr words itself name the path first."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror and str(exc).startswith("[Errno"):
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)

