"""A generic fork server ("zygote"): a process that has already imported what a program's commands
need and forks one child per command, which takes over its client's process state and runs it.

Why: half of a no-op `dvcflow run-a` was importing Prefect (~1.4 s on 2 cores); a child forked from a
process that has imported it starts with all of it in memory, as Gradle's daemon, dmypy or Android's
zygote do. This module knows nothing of dvcflow or Prefect: what to import, which requests to refuse
besides its own checks, what to do once a child has adopted its client, and how to run a command come
from the caller as `StarterHooks` (dvcflow's are in `dvcflow.cli.warm`, which also says what is served).
Standard library only at import: the client side runs on every command's path, `--help` included.

- The owner (dvcflow's server layer) launches the starter (`launch`: `python -m MODULE ARGS...`, whose
  `main` calls `serve_forever`) without waiting for it, and stops it (`stop`); it exits by itself when
  the process it serves beside (`server_pid`) ends. It listens on `<home>/warm.sock` (mode 0600) and logs
  what it serves or refuses to `<home>/warm.log`.
- The client (`serve`) sends argv, cwd, environment, umask, stdio settings, `sys.path` and its fds
  0/1/2 (SCM_RIGHTS). The starter forks only when the fingerprint matches (same interpreter and start-up
  options, `sys.path`, installed packages and the package's source files) and the hooks do not refuse;
  otherwise, or on any failure before the client has told the forked child to go (`GO`), `serve`
  returns None: the caller runs the command itself, and that child exits untouched.
- The child takes over the fds, cwd, environment and signal defaults, calls the hooks' `after_adopt`,
  and runs the command (`run`); the starter reports its exit status (a signal death included) to the
  client, which exits the same way (`exit_like`); the child says it too as it exits, the client's answer
  if the starter died meanwhile (else a code the caller reserves for "unknown"). The client forwards
  SIGINT/SIGQUIT to the child's process group (what a terminal's Ctrl-C reaches), SIGTERM/SIGHUP to the
  child, and stops/continues it on Ctrl-Z/`fg`. If the client dies, the starter SIGKILLs the child's
  process group, as if the command's own process had been killed (the child watches its client too, for
  when the starter has died: the starter's death alone ends no command).

One file of ~950 lines, over the usual ~500: both ends of one protocol (its messages, the `GO`
handshake, which signals are held at the fork and which are forwarded) read best side by side.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import socket

SOCKET_NAME = "warm.sock"
PID_NAME = "warm.pid"
LOG_NAME = "warm.log"
LOCK_NAME = "warm.lock"
READY_NAME = "warm.ready"  # exists while the starter has finished its imports and serves
MAX_MESSAGE = 200_000  # a request larger than this (a huge environment) runs the usual way
HANDSHAKE_TIMEOUT_S = 10.0  # a starter still importing answers once ready: still sooner than importing
READY_TIMEOUT_S = 2.0  # a starter that has imported answers in milliseconds; a hung one costs this much
PROTOCOL = 3  # 3: a request may name an entry point (`StarterHooks.entries`)
CHECK_EVERY_S = 2.0  # how often an idle starter looks for changed code (and, without pidfds, the server)
GO = b"go"  # the client's answer to `accepted`: only then does the child start the command
# A client whose starter died while the child ended without saying its status (a signal killed it). Not
# 1 ("failed"): the program passes its own code for "outcome unknown" (dvcflow: `ExitCode.UNKNOWN`).
UNKNOWN_EXIT = 5
# What the interpreter reads from the environment only as it starts (the rest of its start-up options are
# in `sys.flags`, `sys.warnoptions` and `sys._xoptions`): a forked child has the starter's.
STARTUP_ENV = (
    "PYTHONHASHSEED",
    "PYTHONMALLOC",
    "PYTHONMALLOCSTATS",
    "PYTHONFAULTHANDLER",
    "PYTHONTRACEMALLOC",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONPYCACHEPREFIX",
    "PYTHONNODEBUGRANGES",
)
_DIFFERENCES = {  # what a refusal says for each part of the fingerprint that differs
    "python": "another interpreter",
    "startup": "other interpreter start-up options (sys.flags, -W, -X, PYTHONHASHSEED ...)",
    "path": "another import path",
    "path_mtimes": "packages installed or removed since the starter started",
    "code": "other source files",
}

_forked = False  # set in a child the starter forked for a client (`forked_here`)
_FORWARD_TO_GROUP = (signal.SIGINT, signal.SIGQUIT)  # what a terminal sends to the foreground group
_HELD_AT_FORK = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # those the starter handles itself
_FORWARD_TO_CHILD = (signal.SIGTERM, signal.SIGHUP)  # what `kill PID` or a closed terminal sends
_IGNORABLE = (*_FORWARD_TO_GROUP, *_FORWARD_TO_CHILD)


def _refuse_nothing(_request: Mapping[str, Any]) -> str | None:
    return None


def _nothing_to_do(_request: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class StarterHooks:
    """What a starter of one program needs from that program: passed in, so that this module (below
    the program's layers) imports none of it."""

    module: str  # `python -m MODULE ARGS...` runs this starter: re-executed by it once the code changed
    package: str  # the folder whose `*.py` files are fingerprinted; the client must pass `serve` the same
    preload: Callable[[], None]  # import what commands need (the garbage collector is paused meanwhile)
    # Run a command in the child: the client's `sys.argv`, and its `__main__.__package__` (how it was
    # started, `python -m PACKAGE` or a script: a program's name may depend on it). Returns the exit
    # code, or raises SystemExit as a program does.
    run: Callable[[list[str], str | None], int]
    # A request's refusal beyond the starter's own checks (uid, fingerprint, protocol, threads): a reason
    # the log shows, or None to serve it. Called in the starter, before forking.
    refuse: Callable[[Mapping[str, Any]], str | None] = _refuse_nothing
    # Called in the child once it has taken over its client's state, before `run`.
    after_adopt: Callable[[Mapping[str, Any]], None] = _nothing_to_do
    # Other programs of the package a client may ask for by name (`serve(..., entry=NAME)`) instead of
    # `run`: each gets the client's `sys.argv` and returns the exit code (or raises SystemExit).
    entries: Mapping[str, Callable[[list[str]], int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The program's name in messages (the package's folder: `dvcflow`)."""
        return os.path.basename(os.path.normpath(self.package))


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


def fingerprint(path: Sequence[str], package: str) -> dict[str, Any]:
    """What must be equal for a child of the starter to behave as this process would (~1 ms): the
    interpreter and its start-up options (`sys.flags`, `-W`, `-X`, `STARTUP_ENV`), the import path (its
    first entry, the script's folder, aside), when each path folder last changed (an install or
    upgrade), and the size and mtime of every source file in `package`."""

    def mtime(entry: str) -> int | None:
        try:
            return os.stat(entry).st_mtime_ns
        except OSError:
            return None

    code = []
    for folder, subfolders, files in os.walk(package):
        subfolders.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                stat = os.stat(os.path.join(folder, name))
                code.append(
                    [os.path.relpath(os.path.join(folder, name), package), stat.st_size, stat.st_mtime_ns]
                )
    return {
        "python": [sys.executable, sys.version],
        "startup": [
            list(sys.flags),
            sys.warnoptions,
            sys._xoptions,
            [os.environ.get(name) for name in STARTUP_ENV],
        ],
        "path": list(path[1:]),
        "path_mtimes": [mtime(entry) for entry in path[1:]],
        "code": [package, code],
    }


# ---------------------------------------------------------------------------------------------- client


def _stdio_settings() -> list[dict[str, Any]] | None:
    settings = []
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if stream is None or not hasattr(stream, "reconfigure"):
            return None
        settings.append(
            {
                "encoding": stream.encoding,
                "errors": stream.errors,
                "line_buffering": stream.line_buffering,
                "write_through": getattr(stream, "write_through", False),
            }
        )
    return settings


def _request(argv: Sequence[str], package: str, entry: str | None = None) -> dict[str, Any] | None:
    stdio = _stdio_settings()
    if stdio is None:
        return None
    umask = os.umask(0o022)
    os.umask(umask)
    main = sys.modules.get("__main__")
    return {
        "protocol": PROTOCOL,
        "entry": entry,
        "fingerprint": fingerprint(sys.path, package),
        "argv": [sys.argv[0], *argv],
        "main_package": getattr(main, "__package__", None),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": umask,
        "path": list(sys.path),
        "stdio": stdio,
        "ignored": [int(number) for number in _IGNORABLE if signal.getsignal(number) is signal.SIG_IGN],
    }


def serve(
    home: Path, argv: Sequence[str], package: str, entry: str | None = None, unknown: int = UNKNOWN_EXIT
) -> int | None:
    """Run this command (`argv`, without the program) in a child of the starter of `home` and return its
    exit code (negative: the signal that ended it); None when no starter takes it, and the caller must
    run the command itself. `package` as the starter's hooks have it (the fingerprint's code); `entry`
    names one of its `entries` (None: its `run`). `unknown`: the code when the starter died and the child
    ended without saying how (killed by a signal), so that its exit status cannot be known."""
    try:
        path = socket_path(home)
        if not path.exists():
            return None
        ready = (home / READY_NAME).exists()
        import json  # only now: a command without a starter never pays for them
        import socket

        request = _request(argv, package, entry)
        if request is None:
            return None
        payload = json.dumps(request).encode()
        if len(payload) > MAX_MESSAGE:
            return None
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except Exception:  # an unreadable cwd ...: the usual path reports it
        return None
    child = _handshake(connection, str(path), payload, READY_TIMEOUT_S if ready else HANDSHAKE_TIMEOUT_S)
    if child is None:
        connection.close()
        return None
    name = os.path.basename(os.path.normpath(package))
    return _wait_for(connection, child, set(request["ignored"]), name=name, unknown=unknown)


def _handshake(connection: socket.socket, path: str, payload: bytes, timeout: float) -> int | None:
    """Send the request; the child's pid once this client has told the starter to go ahead. A client
    that gives up (a timeout) never sends `GO`, so its child never starts the command: it runs once."""
    import json
    import socket

    try:
        connection.settimeout(timeout)
        connection.connect(path)
        socket.send_fds(connection, [payload], [0, 1, 2])
        reply = json.loads(connection.recv(MAX_MESSAGE) or b"{}")
        child = reply.get("accepted")
        if not isinstance(child, int):
            return None
        connection.send(GO)
    except (OSError, ValueError):
        return None
    return child


def _forward_signals(child: int, ignored: set[int]) -> None:
    def to_group(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signum)

    def to_child(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signum)

    def suspend(signum: int, _frame: object) -> None:  # Ctrl-Z: stop the child too; `fg` resumes both
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, suspend)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGCONT)

    for number in _FORWARD_TO_GROUP:
        if number not in ignored:
            signal.signal(number, to_group)
    for number in _FORWARD_TO_CHILD:
        if number not in ignored:
            signal.signal(number, to_child)
    signal.signal(signal.SIGTSTP, suspend)


def _wait_for(
    connection: socket.socket,
    child: int,
    ignored: set[int],
    name: str = "client",
    unknown: int = UNKNOWN_EXIT,
) -> int:
    """Forward signals to `child` until the starter reports how it ended; `name` begins messages.

    The child also says its status itself, on the same connection, as it exits (`_report`): the
    starter's word is waited for (only then has the child been reaped, so the client's exit cannot
    make the starter kill the child's group), but if the starter dies, EOF comes once the child is gone
    too (it holds the connection), and its own word is the command's exit status. A child that left
    without one (SIGKILL) while the starter was gone: `unknown`, never a code that claims an outcome."""
    import json

    _forward_signals(child, ignored)
    connection.settimeout(None)
    said: int | None = None
    while True:
        try:
            data = connection.recv(MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:  # the starter died; the child, which holds the connection too, has ended
            if said is not None:
                return said
            print(
                f"{name}: the warm starter went away and the command ended without saying how; "
                f"its exit status is unknown (exit {unknown})",
                file=sys.stderr,
            )
            return unknown
        try:
            message = json.loads(data)
        except ValueError:
            continue
        if isinstance(message.get("exit"), int):
            return int(message["exit"])
        if isinstance(message.get("status"), int):
            said = int(message["status"])


def exit_like(code: int) -> None:
    """End this process as the child ended: with its exit code, or by the same signal."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code  # a signal that does not end a process by default
    os._exit(code)


def ping(home: Path, timeout: float = 60.0) -> int | None:
    """The pid of the starter serving `home` once it is ready (it answers after its imports), waiting up
    to `timeout` s for one just launched to listen; None when there is none (for tests and benchmarks)."""
    import json
    import socket
    import time

    deadline = time.monotonic() + timeout
    while not socket_path(home).exists():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            connection.connect(str(socket_path(home)))
            connection.send(json.dumps({"protocol": PROTOCOL, "ping": True}).encode())
            reply = json.loads(connection.recv(MAX_MESSAGE) or b"{}")
    except (OSError, ValueError):
        return None
    pid = reply.get("pong")
    return pid if isinstance(pid, int) else None


# ------------------------------------------------------------------------ launching and stopping it


def recorded(home: Path, module: str) -> tuple[int, bool] | None:
    """The running starter of `home` (`python -m module`): its pid and whether it serves yet (it does
    once its imports are done); None when none runs."""
    pid = _recorded(home, module)
    return None if pid is None else (pid, (home / READY_NAME).exists())


def _recorded(home: Path, module: str) -> int | None:
    """The recorded starter's pid when that process is still a starter run as `python -m module` (a
    recycled pid is not)."""
    import psutil  # here: not on the client's path

    try:
        pid = int((home / PID_NAME).read_text().strip())
        cmdline = psutil.Process(pid).cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if module in cmdline else None


def launch(home: Path, module: str, args: Sequence[str], env: Mapping[str, str]) -> int | None:
    """Start `python -m module ARGS...` (whose `main` calls `serve_forever` for `home`) unless a starter
    of `home` runs; does not wait for it. The pid of the one launched now (Linux only: pidfds, /proc)."""
    import subprocess

    if not sys.platform.startswith("linux") or _recorded(home, module):
        return None
    try:
        log_fd = os.open(home / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(log_fd, "wb") as log:  # one server's worth of lines
            return subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            ).pid
    except OSError:  # commands then import what they need themselves, as without a starter
        return None


def stop(home: Path, module: str, timeout: float = 10.0) -> int | None:
    """SIGTERM the starter (it stops serving at once and exits when its running commands have ended);
    wait up to `timeout` s for it to exit. Its pid, or None when none ran."""
    import select

    pid = _recorded(home, module)
    if pid is None:
        return None
    try:
        handle = os.pidfd_open(pid)
    except OSError:  # gone already, or a kernel before 5.3: signal it, do not wait
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        return pid
    try:
        os.kill(pid, signal.SIGTERM)
        select.select([handle], [], [], timeout)  # readable once the process has exited
    except OSError:
        pass
    finally:
        os.close(handle)
    return pid


# ---------------------------------------------------------------------------------------------- starter


def serve_forever(home: Path, server_pid: int, hooks: StarterHooks) -> NoReturn:
    """The starter's `main`: listen on `home` at once (an early client waits for the imports instead of
    importing too), import what `hooks.preload` imports, then serve until the process `server_pid`
    ends or `stop`; re-executes itself when the code changed."""
    import gc

    starter = _Starter(home, server_pid, hooks)
    gc.disable()
    hooks.preload()
    gc.freeze()  # what every child shares: never collected, so its pages stay shared
    gc.enable()
    starter.run()


class _Starter:
    """The select loop: accept requests, fork, report exit statuses, kill children of dead clients."""

    def __init__(self, home: Path, server_pid: int, hooks: StarterHooks) -> None:
        import selectors

        self.home = home
        self.hooks = hooks
        self.pid = os.getpid()
        self.lock = self._only_one()
        self.fingerprint = fingerprint(sys.path, hooks.package)
        self.children: dict[int, socket.socket] = {}
        self.waiting: dict[int, int] = {}  # child: the pipe it waits on for the client's `GO`
        self.started: dict[int, float] = {}  # child: when it was forked (its wall time in the log)
        self.orphans: set[int] = set()
        self.stopping = False
        self.stale = False
        self.changed: dict[str, Any] | None = None  # a new fingerprint seen while idle (`_check_code`)
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.listener = self._listen()
        self.server = self._watch(server_pid)
        (home / PID_NAME).write_text(f"{self.pid}\n")
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # while importing: no one to wait for
            signal.signal(number, self._stop_now)

    def _stop_now(self, _signum: int, _frame: object) -> None:
        self._unlisten()
        if _recorded(self.home, self.hooks.module) == self.pid:
            (self.home / PID_NAME).unlink(missing_ok=True)
        os._exit(0)

    def _only_one(self) -> int:
        """One starter per home: a second one (two `server start`s at once) exits at once."""
        import fcntl

        handle = os.open(self.home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os._exit(0)
        return handle

    def _listen(self) -> socket.socket:
        """Bound before the imports: a client that comes early waits for them instead of importing."""
        import socket

        path = socket_path(self.home)
        partial = self.home / f".{SOCKET_NAME}.{self.pid}"
        partial.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o177)
        try:
            listener.bind(str(partial))
        finally:
            os.umask(old)
        listener.listen(64)
        partial.replace(path)
        self.inode = path.stat().st_ino
        return listener

    def _watch(self, server_pid: int) -> int | None:
        """A descriptor readable once the server has exited; None (the loop then polls) without pidfds."""
        self.server_pid = server_pid
        try:
            return os.pidfd_open(server_pid)
        except ProcessLookupError:
            self.stopping = True
        except OSError:
            pass
        return None

    def _server_gone(self) -> bool:
        try:
            os.kill(self.server_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def log(self, message: str) -> None:
        import time

        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{self.pid}] {message}", flush=True)

    def _unlisten(self) -> None:
        (self.home / READY_NAME).unlink(missing_ok=True)
        if self.listener.fileno() < 0:
            return
        with contextlib.suppress(KeyError):  # not registered while importing
            self.selector.unregister(self.listener)
        self.listener.close()
        path = socket_path(self.home)
        try:
            if path.stat().st_ino == self.inode:
                path.unlink()
        except OSError:
            pass

    def run(self) -> NoReturn:
        import selectors

        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, not SIG_IGN: the loop reaps
        signal.set_wakeup_fd(self.wake_write)
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        if self.server is not None:
            self.selector.register(self.server, selectors.EVENT_READ, "server")
        self.log(f"serving {socket_path(self.home)}")
        (self.home / READY_NAME).touch(mode=0o600)
        while True:
            self._reap()
            if self.stopping or self.stale:
                self._unlisten()
                if not self.children:
                    break
            events = self.selector.select(timeout=CHECK_EVERY_S)
            if self.server is None and not self.stopping and self._server_gone():
                self.log("the server has exited; stopping")
                self.stopping = True
            if not events:
                self._check_code()
            for key, _ in events:
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        os.read(self.wake_read, 512)
                elif key.data == "server":
                    self.log("the server has exited; stopping")
                    self.selector.unregister(key.fileobj)
                    self.stopping = True
                elif key.data == "listen":
                    self._accept()
                elif isinstance(key.data, tuple):
                    self._handle(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._client_gone(key.data, key.fileobj)  # type: ignore[arg-type]
        if _recorded(self.home, self.hooks.module) == self.pid:
            (self.home / PID_NAME).unlink(missing_ok=True)
        if self.stale and not self.stopping:
            self.log(f"{self.hooks.name}'s code or packages changed: starting afresh")
            os.execv(sys.executable, [sys.executable, "-m", self.hooks.module, *sys.argv[1:]])
        self.log("stopped")
        os._exit(0)  # nothing to flush or close: skip the interpreter's (and Prefect's) tear-down

    def _check_code(self) -> None:
        """While idle: start afresh once the code or packages changed and then stayed the same for
        one more check, so that the next command finds a fresh starter instead of running the usual way
        while this one re-imports beside it (~2 s of CPU each, at once: a no-op run-a took 3-4 s)."""
        now = fingerprint(sys.path, self.hooks.package)  # ~0.5 ms
        if now == self.fingerprint:
            self.changed = None
        elif now == self.changed:
            self.stale = True
        else:
            self.changed = now

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _reap(self) -> None:
        import json
        import time

        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime  # its process tree's, waited-for children included
            wall = time.monotonic() - self.started.pop(pid, time.monotonic())
            self.log(f"{pid} ended: exit {code}, {cpu:.2f} s CPU, {wall:.2f} s wall")
            self._release(pid, go=False)
            connection = self.children.pop(pid, None)
            if connection is None:
                continue
            if pid not in self.orphans:
                with contextlib.suppress(OSError):
                    connection.send(json.dumps({"exit": code}).encode())
                self.selector.unregister(connection)
            self.orphans.discard(pid)
            connection.close()

    def _client_gone(self, child: int, connection: socket.socket) -> None:
        try:
            data = connection.recv(MAX_MESSAGE)
        except OSError:
            data = b""
        if data == GO and child in self.waiting:
            self._release(child, go=True)
        if data:
            return  # clients send nothing else after their request
        self.log(f"the client of {child} is gone: killing {child} and its process group")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)  # with it what it started there: `--ephemeral`'s server
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)  # in case it had not made its group yet
        self.selector.unregister(connection)
        self.orphans.add(child)  # reaped by `_reap`, which then has no one to tell

    def _refusal(self, request: Mapping[str, Any], fds: list[int], peer_uid: int) -> str | None:
        if peer_uid != os.getuid():
            return "another user"
        if request.get("fingerprint") != self.fingerprint:  # first: a newer client is newer code
            if fingerprint(sys.path, self.hooks.package) != self.fingerprint:
                self.stale = True
                return (
                    f"{self.hooks.name}'s code or installed packages changed since this starter imported them"
                )
            theirs = request.get("fingerprint") or {}
            differ = [key for key in self.fingerprint if theirs.get(key) != self.fingerprint[key]]
            if "path" in differ and "path_mtimes" in differ:  # other folders: other mtimes, naturally
                differ.remove("path_mtimes")
            return "; ".join(_DIFFERENCES.get(key, key) for key in differ) or "another fingerprint"
        if request.get("protocol") != PROTOCOL:
            return "another protocol"
        if request.get("entry") is not None and request["entry"] not in self.hooks.entries:
            return f"no entry point {request['entry']!r}"
        if len(fds) != 3:
            return "not given fds 0, 1 and 2"
        refusal = self.hooks.refuse(request)
        if refusal is not None:
            return refusal
        import psutil  # ~30 µs a request: the threads /proc/self/task lists

        if psutil.Process().num_threads() != 1:
            return "the starter has threads; it cannot fork safely"
        return None

    def _accept(self) -> None:
        """Take the connection; its request is read when it arrives (`_handle`), so a client that
        connects and stalls delays no one."""
        import selectors

        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        connection.setblocking(False)
        self.selector.register(connection, selectors.EVENT_READ, ("request",))

    def _handle(self, connection: socket.socket) -> None:
        """A request has arrived (or its client left): answer a ping, refuse, or fork its child. The
        child waits for the client's `GO` before it does anything (`_client_gone`, `_release`)."""
        import json
        import selectors
        import socket
        import time

        self.selector.unregister(connection)
        fds: list[int] = []
        try:
            data, fds, _, _ = socket.recv_fds(connection, MAX_MESSAGE, 3)
            request = json.loads(data)
            connection.setblocking(True)
            connection.settimeout(1.0)  # replies fit the socket's buffer: this never waits
            if request.get("ping"):
                connection.send(json.dumps({"pong": self.pid}).encode())
                raise OSError("answered")
            credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)  # pid, uid, gid
            refusal = self._refusal(request, fds, int.from_bytes(credentials[4:8], sys.byteorder))
            if refusal is not None:
                self.log(f"refused {_command(request)}: {refusal}")
                connection.send(json.dumps({"refused": refusal}).encode())
                raise OSError("refused")
        except (OSError, ValueError):
            for fd in fds:
                os.close(fd)
            connection.close()
            return
        go_read, go_write = os.pipe2(os.O_CLOEXEC)
        # Until `_become` has put the command's handlers in place, a signal the client forwards would meet
        # the starter's (which only note a stop): the child starts with them held back, delivered once it
        # has. Blocked before the fork: the client may signal before the child has run at all.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_AT_FORK)
        try:
            child = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if child != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        else:
            os.close(go_write)
            if os.read(go_read, 1) != b"g":  # the client gave up: it runs the command itself
                os._exit(0)
            os.close(go_read)
            self._become(request, fds, connection)  # ends this process with the command's exit status
            os._exit(70)  # not reached
        os.close(go_read)
        self.waiting[child] = go_write
        self.started[child] = time.monotonic()
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpgid(child, child)  # also in the child: whichever runs first, signals find the group
        self.children[child] = connection
        self.selector.register(connection, selectors.EVENT_READ, child)
        with contextlib.suppress(OSError):  # a client that left: its EOF ends the child (`_client_gone`)
            connection.send(json.dumps({"accepted": child}).encode())
        self.log(f"serving {_command(request)} in {child}")

    def _release(self, child: int, go: bool) -> None:
        """Let a waiting child start its command, or (no `GO`) close its pipe so that it exits unused."""
        handle = self.waiting.pop(child, None)
        if handle is None:
            return
        with contextlib.suppress(OSError):
            if go:
                os.write(handle, b"g")
        os.close(handle)

    def _become(self, request: Mapping[str, Any], fds: list[int], connection: socket.socket) -> None:
        """In the forked child: take over the client's process state, then run the command."""
        try:
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(number, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for number in request["ignored"]:
                signal.signal(number, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_AT_FORK)  # a Ctrl-C held back lands now
            keep = {connection.fileno(), *fds}
            for other in self.children.values():
                if other.fileno() not in keep:
                    other.close()
            for handle in self.waiting.values():
                os.close(handle)
            self.selector.close()
            self.listener.close()
            os.close(self.wake_read)
            os.close(self.wake_write)
            os.close(self.lock)  # a child still running must not keep a new starter from starting
            if self.server is not None:
                os.close(self.server)
            os.setpgid(0, 0)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            # `connection` stays open until this process ends: the client sees EOF only when both the
            # starter and this child are gone.
            _adopt(request)
            self.hooks.after_adopt(request)
        except KeyboardInterrupt:  # Ctrl-C before the command began: nothing ran, end as interrupted
            os._exit(130)
        except BaseException as err:  # the client waits: say why, end with EX_SOFTWARE
            print(
                f"{self.hooks.name}: the warm starter could not start the command ({err!r})",
                file=sys.stderr,
                flush=True,
            )
            os._exit(70)
        global _forked
        _forked = True
        _watch_client(connection)
        entry = request.get("entry")
        _run(
            request,
            self.hooks.run if entry is None else _without_package(self.hooks.entries[entry]),
            connection,
        )


def _watch_client(connection: socket.socket) -> None:
    """In the forked child: if its client dies, kill this child's process group, as the starter does
    (`_client_gone`) while it lives; this watch is what does it once the starter has died. One thread
    blocked on the connection, which the client closes only by dying (it waits for the exit status)."""
    import select
    import threading

    def watch() -> None:
        try:
            while True:  # select, then recv: the fd's blocking mode is shared with the starter's copy
                select.select([connection], [], [])
                try:
                    if not connection.recv(MAX_MESSAGE):
                        break
                except (BlockingIOError, TimeoutError):
                    continue
        except (OSError, ValueError):
            return  # this process closed it: it is ending
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="zygote-client-watch", daemon=True).start()


def _command(request: Mapping[str, Any]) -> str:
    """What the log names: the command, not its arguments (they may hold a URL with a token), after the
    entry point when it is not the program's own."""
    command = str(list(request.get("argv", [])[1:2]))
    return command if request.get("entry") is None else f"{request['entry']} {command}"


def _without_package(entry: Callable[[list[str]], int]) -> Callable[[list[str], str | None], int]:
    return lambda argv, _main_package: entry(argv)


def forked_here() -> bool:
    """Whether this process is a child a starter forked for a client (a command's own entry point may
    then not ask a starter again)."""
    return _forked


def _adopt(request: Mapping[str, Any]) -> None:
    """This process becomes the client's: cwd, umask, environment, locale, time zone, argv, import path,
    stdio buffering (then the hooks' `after_adopt`: dvcflow's rebuilds Prefect's log handlers)."""
    import locale
    import time

    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    with contextlib.suppress(ProcessLookupError, PermissionError):
        locale.setlocale(locale.LC_CTYPE, "")
    time.tzset()
    sys.argv = list(request["argv"])
    sys.path[:] = request["path"]
    _fresh_stdio(request["stdio"])


def _fresh_stdio(settings: Sequence[Mapping[str, Any]]) -> None:
    """New `sys.stdin/stdout/stderr` on fds 0-2, made as the client's were: the starter's were made for
    /dev/null and a log file (seekable, block-buffered), not for a pipe or a terminal."""
    import io

    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        raw.name = f"<{name}>"
        buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        stream = io.TextIOWrapper(buffered, newline=None if fd == 0 else "\n", **settings[fd])
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run(
    request: Mapping[str, Any],
    run: Callable[[list[str], str | None], int],
    connection: socket.socket | None = None,
) -> NoReturn:
    """Run the command as the interpreter would have run it, and end this process as it would have;
    first tell the client how (`connection`), in case the starter is no longer there to."""
    try:
        code = run(list(request["argv"]), request.get("main_package"))
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except KeyboardInterrupt:  # as Python ends on an uncaught Ctrl-C: a traceback, then by SIGINT
        sys.excepthook(*sys.exc_info())
        _finish()
        _report(connection, -signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _finish()
    _report(connection, code)
    os._exit(code)


def _report(connection: socket.socket | None, code: int) -> None:
    """Tell the client this child's exit status (negative: the signal it ends by), as the starter will
    once it has reaped it: the client's answer if the starter has died meanwhile (`_wait_for`)."""
    import json

    if connection is None:
        return
    with contextlib.suppress(OSError):
        connection.settimeout(1.0)  # a client that stopped reading must not keep this child alive
        connection.send(json.dumps({"status": code}).encode())


def _exit_status(code: object) -> int:
    """What the interpreter makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish() -> None:
    """The part of the interpreter's exit a command can observe: waiting for its non-daemon threads,
    its `atexit` handlers (Prefect's, logging's), flushed stdio. Tearing down the modules the starter
    imported would cost ~0.3 s for nothing."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
