"""The local Prefect server: start in the background, wait for health, stop by recorded pid, status.

Files under the dvcflow home: `server.pid`, `server.json` (what was started, no secrets) and
`server.log`. The Prefect database lives in `<home>/prefect/prefect.db` unless a database URL is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dvcflow.core.errors import ServerError
from dvcflow.core.settings import WARM_STARTER_MODULE, ServerConfig, local_client_environment, warm_enabled
from dvcflow.proc import children, zygote

HEALTH_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    url: str
    api_url: str
    pid: int | None
    prefect_version: str | None
    database: str
    log_file: Path
    home: Path
    warm_starter: tuple[int, bool] | None = None  # pid, serving yet (see `dvcflow.cli.warm`)

    def as_dict(self) -> dict[str, object]:
        starter = self.warm_starter
        return {
            "running": self.running,
            "url": self.url,
            "api_url": self.api_url,
            "pid": self.pid,
            "prefect_version": self.prefect_version,
            "database": self.database,
            "log_file": str(self.log_file),
            "home": str(self.home),
            "warm_starter": None if starter is None else {"pid": starter[0], "ready": starter[1]},
        }


@dataclass(frozen=True)
class StartResult:
    status: ServerStatus
    already_running: bool
    seconds: float


def _pid_file(config: ServerConfig) -> Path:
    return config.home / "server.pid"


def log_file(config: ServerConfig) -> Path:
    return config.home / "server.log"


def _state_file(config: ServerConfig) -> Path:
    return config.home / "server.json"


def _is_prefect_server(pid: int) -> bool:
    """Guard against a recycled pid: only signal a process that is a Prefect server."""
    argv = children.command_line(pid)
    if argv is None:  # gone, or not ours to read
        return children.running(pid)
    line = " ".join(argv)
    # dvcflow's own lean server (`_command`), or `prefect server start`
    return "dvcflow.server.process" in line or ("prefect" in line and "server" in line)


def recorded_pid(config: ServerConfig) -> int | None:
    """The pid dvcflow recorded, if that process is still a live Prefect server."""
    try:
        pid = int(_pid_file(config).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if children.running(pid) and _is_prefect_server(pid) else None


def health(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as response:
            return response.status == 200 and response.read().strip() == b"true"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_version(url: str, auth: str | None, timeout: float = 2.0) -> str | None:
    request = urllib.request.Request(f"{url}/api/admin/version")
    if auth:
        import base64

        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(json.loads(response.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _installed_prefect() -> str | None:
    """The server runs this interpreter's Prefect; used when the API needs credentials we lack."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect")
    except PackageNotFoundError:
        return None


def _version(config: ServerConfig) -> str | None:
    return server_version(config.url, config.auth) or _installed_prefect()


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def status(config: ServerConfig) -> ServerStatus:
    pid = recorded_pid(config)
    running = pid is not None and health(config.url)
    return _status(config, pid, _version(config) if running else None, running=running)


def _status(config: ServerConfig, pid: int | None, version: str | None, *, running: bool) -> ServerStatus:
    return ServerStatus(
        running=running,
        url=config.url,
        api_url=config.api_url,
        pid=pid,
        prefect_version=version,
        database=config.database_location,
        log_file=log_file(config),
        home=config.home,
        warm_starter=zygote.recorded(config.home, WARM_STARTER_MODULE),
    )


@contextlib.contextmanager
def _start_lock(config: ServerConfig) -> Iterator[None]:
    """Two commands starting the server at once must not race for the port."""
    try:
        config.home.mkdir(parents=True, exist_ok=True)
        handle = open(config.home / "server.lock", "w")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise ServerError(f"cannot use {config.home} as dvcflow's home ({err.strerror})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _command(config: ServerConfig) -> list[str]:
    """Prefect's server, started leaner than `prefect server start` (see `dvcflow.server.process`)."""
    return [
        sys.executable,
        "-m",
        "dvcflow.server.process",
        "--host",
        config.host,
        "--port",
        str(config.port),
    ]


def _environment(config: ServerConfig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(config.server_environment())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_healthy(config: ServerConfig, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(
                f"the Prefect server exited with code {process.returncode} before it was healthy; "
                f"last lines of {log_file(config)}:\n{_tail(log_file(config))}"
            )
        if health(config.url, timeout=1.0):
            return
        time.sleep(0.05)
    _terminate(process, timeout=5)
    _pid_file(config).unlink(missing_ok=True)
    raise ServerError(
        f"the Prefect server at {config.url} was not healthy within {timeout:g} s; "
        f"last lines of {log_file(config)}:\n{_tail(log_file(config))}"
    )


def _await_health(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not health(url, timeout=2.0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _refuse_busy_port(config: ServerConfig) -> None:
    if not port_in_use(config.host, config.port):
        return
    if health(config.url):
        raise ServerError(
            f"port {config.port} is taken by a Prefect server dvcflow did not start",
            hint=f"use it with `export PREFECT_API_URL={config.api_url}`, or pick another --port",
        )
    raise ServerError(
        f"port {config.port} on {config.host} is taken by another program",
        hint="pick another port with --port or DVCFLOW_PORT",
    )


def start(config: ServerConfig, *, timeout: float = HEALTH_TIMEOUT_S) -> StartResult:
    """Start the server in the background (or find it running) and wait until it is healthy."""
    began = time.monotonic()
    with _start_lock(config):
        pid = recorded_pid(config)
        if pid is not None:  # ours: healthy, or busy (a loaded machine, still starting) — wait for it
            if not _await_health(config.url, timeout):
                raise ServerError(
                    f"dvcflow's server (pid {pid}) does not answer at {config.url} within {timeout:g} s; "
                    f"last lines of {log_file(config)}:\n{_tail(log_file(config))}",
                    hint="`dvcflow server stop`, then start it again",
                )
            current = _with_starter(status(config), _launch_starter(config, pid))
            return StartResult(current, already_running=True, seconds=time.monotonic() - began)
        _refuse_busy_port(config)
        config.prefect_home.mkdir(parents=True, exist_ok=True)
        with open(log_file(config), "ab") as log:
            process = subprocess.Popen(
                _command(config),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment(config),
                start_new_session=True,  # survives the command that started it and its Ctrl-C
            )
        _pid_file(config).write_text(f"{process.pid}\n")
        _state_file(config).write_text(
            json.dumps({"pid": process.pid, "url": config.url, "database": config.database_location}) + "\n"
        )
        _wait_healthy(config, process, timeout)
        starter = _launch_starter(config, process.pid)  # imports in the background; used once it is ready
    # Just started and healthy: no need to ask. Its Prefect is this interpreter's (it runs sys.executable);
    # the API, busy starting its services, would take 0.1-1 s to say so.
    started = _status(config, process.pid, _installed_prefect(), running=True)
    return StartResult(
        _with_starter(started, starter), already_running=False, seconds=time.monotonic() - began
    )


def _launch_starter(config: ServerConfig, server_pid: int) -> int | None:
    """Start the warm starter beside the server `server_pid` (unless `DVCFLOW_WARM=0` or one runs); does
    not wait for it. Its Prefect is imported with exactly what `connect` exports for this server, so that
    commands with those settings can be served. The pid of the one launched now."""
    if not warm_enabled(os.environ):
        return None
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(local_client_environment(config))
    args = [str(config.home.resolve()), str(server_pid)]
    return zygote.launch(config.home, WARM_STARTER_MODULE, args, env)


def _with_starter(current: ServerStatus, launched: int | None) -> ServerStatus:
    """A starter launched just now has not recorded itself yet: show it as starting."""
    return current if launched is None else dataclasses.replace(current, warm_starter=(launched, False))


def run_foreground(config: ServerConfig) -> None:
    """Serve attached to the terminal until Ctrl-C (re-raised once the server is down: the CLI boundary
    owns exit codes); still recorded so `status` sees it. A server that exits by itself is a `ServerError`."""
    with _start_lock(config):
        if recorded_pid(config) is not None and health(config.url):
            raise ServerError(f"a dvcflow server is already running at {config.url}")
        _refuse_busy_port(config)
        config.prefect_home.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(_command(config), env=_environment(config))
        _pid_file(config).write_text(f"{process.pid}\n")
    try:
        code = process.wait()
    except KeyboardInterrupt:
        _terminate(process, timeout=10)
        raise
    finally:
        _pid_file(config).unlink(missing_ok=True)
    if code != 0:
        raise ServerError(f"the Prefect server exited with code {code} (its output is above)")


def _terminate(process: subprocess.Popen[bytes] | int, timeout: float) -> None:
    """SIGTERM (to its process group when it leads one), SIGKILL after `timeout` s."""
    children.stop_then_kill(process, ((signal.SIGTERM, timeout),))


def stop(config: ServerConfig, *, timeout: float = 20.0) -> int | None:
    """Stop the server dvcflow started; returns its pid, or None if none was running."""
    zygote.stop(config.home, WARM_STARTER_MODULE)
    pid = recorded_pid(config)
    if pid is not None:
        _terminate(pid, timeout)
    _pid_file(config).unlink(missing_ok=True)
    _state_file(config).unlink(missing_ok=True)
    return pid
