"""Where a run's output goes.

By default (`session(verbose=False)`) the terminal shows only the run's own lines: stages, progress, the final
table, and warnings of our own. Everything else goes to one log file in the run folder: this process's log
records, warnings and whatever libraries write to stdout/stderr, and every Ray worker's stdout/stderr (sampler and
writer actors, the Train controller and workers), each line prefixed with its process as Ray prints it. With
`verbose=True` nothing is hidden: records and worker lines reach the terminal as Ray prints them, and the file
gets them too.

Worker lines reach this process through Ray's log forwarding (the same stream `log_to_driver` prints), so the file
holds the lines of every node of the cluster, also when the job runs under `ray job submit`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A tqdm-style bar update: `desc: 45%|████ | 122/272 [...]` (vLLM's reads `desc: 0% Completed | 0/1 [...]`).
_BAR = re.compile(r"(?P<desc>.*?)\s*\d{1,3}%.*?\|\s*(?P<n>\d+)/(?P<total>\d+)\b")
# Libraries that log at INFO/DEBUG about every request; their warnings still count.
_CHATTY = ("urllib3", "botocore", "boto3", "s3transfer", "filelock", "httpx", "httpcore", "fsspec", "asyncio")
_RAY_PRINTER = "ray_print_logs"  # the name Ray gives its own printer of worker lines
_OURS = "sami_ray_log_file"
_RAY_BAR = "__ray_tqdm_magic_token__"  # ray.experimental.tqdm_ray's line marker


class _Formatter(logging.Formatter):
    """Log records as `time LEVEL name: message`; captured stream lines as `time (origin) line`."""

    def format(self, record: logging.LogRecord) -> str:
        origin = getattr(record, "origin", None)
        if origin is None:
            return super().format(record)
        return f"{self.formatTime(record, self.datefmt)} {origin} {record.getMessage()}"


def _plain(line: str) -> str:
    """A line as a terminal would leave it: the last carriage-return update of a progress bar, no colours."""
    return _ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]).rstrip()


class _Session:
    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.terminal: TextIO = sys.stdout  # the real streams, kept while sys.stdout/sys.stderr are captured
        self.errors: TextIO = sys.stderr
        self.path: Path | None = None
        self.file: logging.FileHandler | None = None
        self.upload: Callable[[bytes], None] | None = None
        # Records wait here until the run folder (and so the file) is known.
        self.buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        self.sink: logging.Handler = self.buffer
        self.lock = threading.RLock()
        self.ray_routed = False
        self.bars: dict[str, str] = {}  # origin -> the last update of a bar not yet finished

    def emit(self, origin: str, line: str) -> None:
        """One line of a stream (this process's or a worker's) into the file. A progress bar's updates reach us
        as lines of their own (Ray reads worker logs with universal newlines): only its last state is kept."""
        text = _plain(line)
        if not text:
            return
        bar = _BAR.match(text)
        with self.lock:
            held = self.bars.pop(origin, None)
            if bar and not (bar["n"] == bar["total"]):
                self.bars[origin] = text  # wait for the next update, or for another line, to show the last one
                text = ""
            if held is not None and not (bar and held.startswith(bar["desc"])):
                self._write(origin, held)
            if text:
                self._write(origin, text)

    def _write(self, origin: str, text: str) -> None:
        self.sink.handle(logging.makeLogRecord({"name": "output", "levelno": logging.INFO, "levelname": "INFO",
                                                "msg": text, "origin": origin}))

    def flush_bars(self) -> None:
        with self.lock:
            held, self.bars = self.bars, {}
            for origin, text in held.items():
                self._write(origin, text)


_session: _Session | None = None
_last_path: Path | None = None  # for the error message after a session ended


class _Captured(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: whole lines go to the log file, progress-bar updates collapsed."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, s: _Session, origin: str, real: TextIO):
        super().__init__()
        self._s, self._origin, self._real = s, origin, real
        self._partial = ""
        self._lock = threading.Lock()
        self._inside = threading.local()  # a record that fails to log writes to sys.stderr: do not loop

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # C code and faulthandler write to this descriptor: the log file once it is open.
        stream = self._s.file.stream if self._s.file is not None else self._real
        return stream.fileno()

    def write(self, text: str) -> int:
        if _session is not self._s:  # a handler made during the session outlives it
            return self._real.write(text)
        if getattr(self._inside, "busy", False):
            return len(text)
        with self._lock:
            *lines, rest = (self._partial + text).split("\n")
            self._partial = rest[rest.rfind("\r") + 1:] if "\r" in rest else rest  # keep a bar's last update only
        self._inside.busy = True
        try:
            for line in lines:
                self._s.emit(self._origin, line)
        finally:
            self._inside.busy = False
        return len(text)

    def flush(self) -> None:
        pass


class _Terminal(logging.Handler):
    """Our own warnings on the terminal in quiet mode (everything else is in the file)."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"{record.levelname.lower()}: {record.getMessage()}", to_file=False)


@contextlib.contextmanager
def session(verbose: bool) -> Iterator[None]:
    """Route this command's output as the module says, until it ends. An error ending the command is logged to
    the file too; it then propagates with the real streams back in place (so a traceback reaches the terminal)."""
    global _session
    s = _Session(verbose)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), sys.stdout, sys.stderr, logging.raiseExceptions)
    root.handlers = [s.buffer]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(FILE_FORMAT, "%H:%M:%S"))
        root.addHandler(stream)
    else:
        ours = _Terminal(logging.WARNING)
        ours.addFilter(logging.Filter("sami_ray"))
        root.addHandler(ours)
        sys.stdout = _Captured(s, "[stdout]", s.terminal)
        sys.stderr = _Captured(s, "[stderr]", s.errors)
        logging.raiseExceptions = False  # a record that cannot be written must not print a traceback here
    _session = s
    try:
        yield
    except BaseException as e:
        if isinstance(e, SystemExit | KeyboardInterrupt):
            s.sink.handle(logging.makeLogRecord({"name": "sami_ray", "levelno": logging.INFO,
                                                 "levelname": "INFO", "msg": f"ended: {e!r}"}))
        else:
            s.sink.handle(logging.makeLogRecord({"name": "sami_ray", "levelno": logging.ERROR, "levelname": "ERROR",
                                                 "msg": "".join(traceback.format_exception(e)).rstrip()}))
        raise
    finally:
        _session = None
        if s.ray_routed:
            _stop_routing_workers()
        root.level, root.handlers, sys.stdout, sys.stderr, logging.raiseExceptions = saved
        logging.captureWarnings(False)
        _close(s)


def to_file(path: Path, upload: Callable[[bytes], None] | None = None) -> Path | None:
    """Open the log file (appended to: a resumed run adds to its log); what was logged so far goes in first.
    `upload(content)` copies it into the run folder at the end, when the run folder is not on this disk."""
    s = _session
    if s is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_Formatter(FILE_FORMAT, "%Y-%m-%d %H:%M:%S"))
    with s.lock:
        s.buffer.setTarget(handler)
        s.buffer.flush()
        root = logging.getLogger()
        root.handlers = [handler if h is s.buffer else h for h in root.handlers]
        s.buffer.close()
        s.path, s.file, s.sink, s.upload = path, handler, handler, upload
    global _last_path
    _last_path = path
    return path


def _close(s: _Session) -> None:
    s.flush_bars()
    s.sink.flush()
    if s.file is not None:
        s.file.close()
        if s.upload is not None and s.path is not None:
            try:
                s.upload(s.path.read_bytes())
            except Exception as e:  # the run's result stands; the log stays on this node
                print(f"warning: the log could not be copied into the run folder ({e}); it is at {s.path}",
                      file=sys.stderr)


def say(msg: str, to_file: bool = True) -> None:
    """A line for the person at the terminal (or in `ray job logs`), kept in the log file too. Progress bars on
    the terminal are lifted while it is written."""
    s = _session
    if s is None:
        print(msg, flush=True)
        return
    from tqdm import tqdm

    tqdm.write(msg, file=s.terminal)
    s.terminal.flush()
    if to_file:
        s.emit("|", msg)


def terminal() -> TextIO | None:
    """The stream our own lines and bars go to while a session routes output; None outside one."""
    return _session.terminal if _session is not None else None


def log_path() -> Path | None:
    """The log file of the session running now, or of the last one."""
    return _session.path if _session is not None else _last_path


@contextlib.contextmanager
def on_terminal() -> Iterator[None]:
    """`print` reaches the terminal (and the file) for the duration: for tables printed at the end."""
    s = _session
    if s is None or s.verbose:
        yield
        return

    class Both(io.TextIOBase):
        def write(self, text: str) -> int:
            s.terminal.write(text)
            for line in text.splitlines():
                s.emit("|", line)
            return len(text)

        def flush(self) -> None:
            s.terminal.flush()

    saved, sys.stdout = sys.stdout, Both()
    try:
        yield
    finally:
        sys.stdout = saved


# ------------------------------------------------------------------ Ray workers' lines


def _dispatcher() -> Any:
    """Ray's hub of forwarded worker lines (the driver's `log_to_driver` stream), or None if this Ray has none."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as d
    except ImportError:
        return None
    return d if all(hasattr(d, a) for a in ("add_handler", "remove_handler", "handlers")) else None


def ray_init_options() -> dict:
    """`ray.init` keyword arguments: worker lines are forwarded to this process unless a quiet session cannot take
    them off Ray's printer (then each worker keeps them in its own log file only)."""
    quiet = _session is not None and not _session.verbose
    return {"log_to_driver": not quiet or _dispatcher() is not None}


def _origin(data: dict) -> str:
    pid = data.get("pid")
    if pid in ("raylet", "autoscaler"):
        return f"({pid})"
    who = data.get("actor_name") or data.get("task_name")
    ip = data.get("ip")
    where = f", ip={ip}" if ip and ip != data.get("localhost") else ""
    return f"({who + ' ' if who else ''}pid={pid}{where})"


def _worker_lines(data: dict) -> None:
    s = _session
    if s is None:
        return
    origin = _origin(data)
    lines = data.get("lines", [])
    if data.get("pid") == "autoscaler":
        lines = _autoscaler_events(lines)
    for line in lines:
        if _RAY_BAR not in line:  # a Ray Data bar's state, many a second; Ray draws it as a bar with -v
            s.emit(origin, line)


def _autoscaler_events(lines: list[str]) -> list[str]:
    """The autoscaler's events only, as Ray's printer keeps them; not its status table every few seconds."""
    try:
        from ray._private.worker import filter_autoscaler_events

        return list(filter_autoscaler_events(lines))
    except Exception:  # private to Ray (and it asks the cluster which autoscaler runs)
        return []


def ray_started() -> None:
    """After `ray.init` in this process: worker lines go to the log file, and (verbose) still to the terminal."""
    s = _session
    if s is None or s.ray_routed:
        return
    s.ray_routed = True
    d = _dispatcher()
    if d is not None:
        d.remove_handler(_OURS)
        d.add_handler(_OURS, _worker_lines)
        if not s.verbose:
            d.remove_handler(_RAY_PRINTER)
    logs = _ray_logs_dir()
    where = f"{logs} on the node that ran each one" if logs else "Ray's session folder on each node"
    s.emit("|", f"Ray workers' own log files: {where} (`ray logs` lists them)" +
           ("" if d is not None else "; their lines are not copied here (this Ray cannot forward them)"))


def _stop_routing_workers() -> None:
    d = _dispatcher()
    if d is not None:
        d.remove_handler(_OURS)


def _ray_logs_dir() -> str | None:
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # private to Ray; a pointer is a courtesy
        return None
