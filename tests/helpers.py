"""Builders shared by the tests: real DVC repositories in temporary folders, dvcflow as a process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = (
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "data/raw/iris.csv.dvc",
    "data/raw/.gitignore",
    "src/mltoy",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: no inherited Prefect settings, quiet DVC, a git identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVCFLOW_"))}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(home / "dvc-site-cache"),
        DVC_GLOBAL_CONFIG_DIR=str(home / "dvc-global"),
        GIT_AUTHOR_NAME="dvcflow tests",
        GIT_AUTHOR_EMAIL="tests@dvcflow.local",
        GIT_COMMITTER_NAME="dvcflow tests",
        GIT_COMMITTER_EMAIL="tests@dvcflow.local",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        NO_COLOR="1",
        COLUMNS="200",
        TERM="dumb",
    )
    return env


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout


def stage_registry_toml() -> str:
    """The demo's `[tool.dvcflow.stages]` table (its in-process stage functions), alone: a copy of the
    demo gets the registry but not the project's server settings."""
    import tomllib

    table = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["dvcflow"]["stages"]
    return "[tool.dvcflow.stages]\n" + "".join(f'{name} = "{target}"\n' for name, target in table.items())


def make_pipeline_repo(root: Path, env: dict[str, str]) -> Path:
    """A git+DVC copy of the demo pipeline, committed, with the raw data materialised."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        source = PROJECT / name
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (root / "pyproject.toml").write_text(stage_registry_toml())
    git(root, "init", "-q", "-b", "main", env=env)
    subprocess.run(
        [sys.executable, "-m", "mltoy.data", "--out", "data/raw/iris.csv"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "pipeline", env=env)
    return root


def dvcflow(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run `python -m dvcflow ARGS` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "dvcflow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dvc(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def make_tiny_repo(root: Path, env: dict[str, str], stages: str | None = None) -> Path:
    """A committed git+DVC repo with a one-stage pipeline: any DVC repo, not only the demo."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main", env=env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True, capture_output=True
    )
    (root / "dvc.yaml").write_text(
        stages
        or (
            "stages:\n"
            "  hello:\n"
            "    cmd: python -c \"open('out.txt', 'w').write('hello')\"\n"
            "    outs:\n"
            "      - out.txt\n"
        )
    )
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "tiny pipeline", env=env)
    return root


# Prefect answers 503 when SQLite was busy (`is_client_retryable_exception`: SQLITE_BUSY, e.g. a deferred
# transaction meeting the services' writes on a loaded machine); its own client retries those, so do we.
API_RETRIES = 5
RETRIED_STATUSES = {429, 502, 503}


def api_post(api_url: str, path: str, body: dict[str, object], auth: str | None = None) -> object:
    """POST JSON to the Prefect REST API, as a client independent of dvcflow would (with Prefect's
    client's bounded retries of a busy server: 0.5, 1, 2, 4, 8 s apart)."""
    import base64
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{api_url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    for attempt in range(API_RETRIES + 1):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code not in RETRIED_STATUSES or attempt == API_RETRIES:
                raise
            time.sleep(0.5 * 2**attempt)  # a back-off, as Prefect's client's, not a synchronisation
    raise AssertionError("unreachable")


BRANCH_PY = """\
import json, os, sys, time
name, seconds = sys.argv[1], float(sys.argv[2])
start = time.time()
if os.path.exists(f"fail-{name}"):
    sys.exit(f"branch {name} was told to fail")
time.sleep(seconds)
with open(f"out/branch-{name}.json", "w") as f:
    json.dump({"start": start, "end": time.time()}, f)
"""

JOIN_PY = """\
import json, os, sys, time
start = time.time()
if os.path.exists("flaky-join"):
    os.remove("flaky-join")
    sys.exit("join: failing this once")
parts = sorted(os.listdir("out"))
with open("out/joined.json", "w") as f:
    json.dump({"start": start, "parts": parts}, f)
"""


def _init_wide(
    root: Path,
    env: dict[str, str],
    items: Sequence[object],
    cmd: str,
    script: str,
    branch_out: str,
    joined: str,
) -> None:
    """The wide pipelines' `dvc.yaml` (`branch`: a `foreach` of `cmd` over `items`, each writing
    `branch_out` with its item; `join` after all of them, writing `joined`), in a new git+DVC repository."""
    spec = {
        "stages": {
            "branch": {
                "foreach": items,
                "do": {"cmd": cmd, "deps": [script], "outs": [branch_out.format("${item}")]},
            },
            "join": {
                "cmd": "python join.py",
                "deps": ["join.py", *(branch_out.format(item) for item in items)],
                "outs": [joined],
            },
        }
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    git(root, "init", "-q", "-b", "main", env=env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True, capture_output=True
    )


def make_wide_repo(root: Path, env: dict[str, str], *, branches: int, sleep: float) -> Path:
    """`branch` is a `foreach` of K independent sleeping stages; `join` depends on all of them.

    A branch fails when a file `fail-<item>` exists; the join fails once when `flaky-join` exists.
    Each branch records when it slept in `out/branch-<item>.json`. Used by tests and `bench/`."""
    root.mkdir(parents=True)
    (root / "branch.py").write_text(BRANCH_PY)
    (root / "join.py").write_text(JOIN_PY)
    (root / "out").mkdir()
    _init_wide(root, env, list(range(branches)), f"python branch.py ${{item}} {sleep}", "branch.py",
               "out/branch-{}.json", "out/joined.json")  # fmt: skip
    return root


SHAPED_SCRIPTS = {
    "work/prep.py": """\
import pathlib, sys, yaml
scale = yaml.safe_load(open("../params.yaml"))["prep"]["scale"]
raw = pathlib.Path("../data/raw.txt").read_text().split()
pathlib.Path("../build").mkdir(exist_ok=True)
pathlib.Path("../build/prepared.txt").write_text("\\n".join(str(int(x) * scale) for x in raw) + "\\n")
print(f"prepared {len(raw)} numbers x{scale}")
""",
    "feature.py": """\
import pathlib, sys, yaml
item = sys.argv[1]
depth = yaml.safe_load(open("config/model.yaml"))["model"]["depth"]
numbers = [int(x) for x in pathlib.Path("build/prepared.txt").read_text().split()]
pathlib.Path("features").mkdir(exist_ok=True)
value = sum(numbers) * depth if item == "sum" else max(numbers) * depth
pathlib.Path(f"features/{item}.txt").write_text(f"{value}\\n")
print(f"feature {item} = {value}")
""",
    "shard.py": """\
import pathlib
out = pathlib.Path("shards")
out.mkdir(exist_ok=True)
for name in ("sum", "max"):
    value = pathlib.Path(f"features/{name}.txt").read_text()
    (out / f"{name}.shard").write_text(value * 2)
print("wrote 2 shards")
""",
    "train.py": """\
import json, pathlib, yaml
epochs = yaml.safe_load(open("params.yaml"))["train"]["epochs"]
total = sum(int(p.read_text().split()[0]) for p in sorted(pathlib.Path("shards").iterdir()))
json.dump({"score": total * epochs, "epochs": epochs}, open("metrics.json", "w"))
print(f"trained for {epochs} epochs")
""",
}

SHAPED_DVC_YAML = """\
stages:
  prep:
    wdir: work
    cmd: python prep.py
    deps:
      - prep.py
      - ../data/raw.txt
    params:
      - ../params.yaml:
          - prep
    outs:
      - ../build/prepared.txt
  feature:
    foreach: [sum, max]
    do:
      cmd: python feature.py ${item}
      deps:
        - feature.py
        - build/prepared.txt
      params:
        - config/model.yaml:
            - model.depth
      outs:
        - features/${item}.txt
  shards:
    cmd: python shard.py
    deps:
      - shard.py
      - features/sum.txt
      - features/max.txt
    outs:
      - shards
  train:
    cmd: python train.py
    deps:
      - train.py
      - shards
    params:
      - train.epochs
    metrics:
      - metrics.json:
          cache: false
"""


def make_shaped_repo(root: Path, env: dict[str, str]) -> Path:
    """A committed git+DVC repo shaped like a real one, not the demo: a `.dvc` source, a stage with
    `wdir`, a `foreach` stage, a directory output, params in two files, an uncached metrics file.

    (No stage depends on the `features` directory as a whole: DVC writes a `.gitignore` there whose
    lines follow the order in which the parallel `feature` stages finish, see docs/run-b.md.)"""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main", env=env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True, capture_output=True
    )
    for name, text in SHAPED_SCRIPTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "data").mkdir()
    (root / "data/raw.txt").write_text("3 1 4 1 5 9 2 6\n")
    subprocess.run(
        [sys.executable, "-m", "dvc", "add", "-q", "data/raw.txt"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    (root / "config").mkdir()
    (root / "config/model.yaml").write_text("model:\n  depth: 2\n  name: tiny\n")
    (root / "params.yaml").write_text("prep:\n  scale: 10\ntrain:\n  epochs: 3\n")
    (root / "dvc.yaml").write_text(SHAPED_DVC_YAML)
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "shaped pipeline", env=env)
    return root


def make_chain_repo(root: Path, env: dict[str, str], stages: int = 50) -> Path:
    """s00 → s01 → … → s49, each a one-line shell command; committed. Used by `bench/`."""
    spec: dict[str, object] = {}
    for i in range(stages):
        stage: dict[str, object] = {"cmd": f"echo {i} > out/s{i:02d}.txt", "outs": [f"out/s{i:02d}.txt"]}
        if i:
            stage["deps"] = [f"out/s{i - 1:02d}.txt"]
        spec[f"s{i:02d}"] = stage
    (root / "out").mkdir(parents=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": spec}, sort_keys=False))
    git(root, "init", "-q", "-b", "main", env=env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True, capture_output=True
    )
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "pipeline", env=env)
    return root


# A stage that records when it slept, which GPUs it was given and on which Dask worker it ran.
# With DVCFLOW_TEST_SPANS set, each span is also appended to that file, with the stage's working directory:
# a sweep trial's workspace is removed at its end (tests/test_sweep_resources.py).
TIMED_STAGE_PY = """\
import json, os, sys, time
name, seconds = sys.argv[1], float(sys.argv[2])
start = time.time()
time.sleep(seconds)
os.makedirs("out", exist_ok=True)
span = {"start": start, "end": time.time(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "worker": os.environ.get("DVCFLOW_TEST_WORKER")}
with open(f"out/{name}.json", "w") as f:
    json.dump(span, f)
if os.environ.get("DVCFLOW_TEST_SPANS"):
    with open(os.environ["DVCFLOW_TEST_SPANS"], "a") as f:
        f.write(json.dumps({"name": name, "cwd": os.getcwd(), **span}) + "\\n")
"""


def timed_stage(name: str, seconds: float, meta: dict[str, object] | None = None) -> dict[str, object]:
    """A `dvc.yaml` stage running `stage.py NAME SECONDS` (`${item}` works in `name`), writing
    `out/NAME.json`; `meta` becomes its `meta: {dvcflow: ...}`."""
    stage: dict[str, object] = {
        "cmd": f"python stage.py {name} {seconds}",
        "deps": ["stage.py"],
        "outs": [f"out/{name}.json"],
    }
    if meta is not None:
        stage["meta"] = {"dvcflow": meta}
    return stage


def make_resource_repo(
    root: Path, env: dict[str, str], stages: dict[str, object], *, pyproject: str | None = None
) -> Path:
    """A committed git+DVC repository of timed stages (`timed_stage`, or `foreach` of them), with an
    optional `pyproject.toml` (its `[tool.dvcflow.resources]` / `[tool.dvcflow.capacity]`). Used by
    tests/test_resources.py and `bench/bench_resources.py`."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(TIMED_STAGE_PY)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject)
    git(root, "init", "-q", "-b", "main", env=env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True, capture_output=True
    )
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "timed stages", env=env)
    return root


def stage_spans(repo: Path) -> dict[str, dict[str, object]]:
    """What each timed stage recorded (`out/NAME.json`): start, end, gpus, worker."""
    import json

    return {path.stem: json.loads(path.read_text()) for path in sorted((repo / "out").glob("*.json"))}


def forget_machine_limit(env: dict[str, str], resource: str) -> None:
    """Delete this machine's global concurrency limit for `resource` on the test's server: a run keeps an
    existing limit (whatever capacity an earlier run gave it), so a test of the limit starts from none."""
    import urllib.error
    import urllib.request

    from dvcflow.api.limits import limit_name

    api = f"http://127.0.0.1:{env['DVCFLOW_PORT']}/api"
    request = urllib.request.Request(f"{api}/v2/concurrency_limits/{limit_name(resource)}", method="DELETE")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as err:
        assert err.code == 404, err  # none yet: nothing to forget


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the instant another starts does not overlap)."""
    events = sorted(
        [(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1])
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


# A `LocalCluster` of two worker processes, each working in a scratch folder of its own (HOME, DVCFLOW_CLONES
# there), every stage command logging its working directory to CWD_LOG: Dask workers that do not share the
# caller's disk. Arguments: port, scratch folder, log path; prints "ready". tests/test_dask_clones.py, bench/.
DASK_SCRATCH_CLUSTER = """\
import os, sys, time
from distributed import Client, LocalCluster

port, scratch, cwd_log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, scheduler_port=port,
                       dashboard_address=None)
client = Client(cluster)
for index, worker in enumerate(sorted(client.scheduler_info()["workers"])):
    folder = os.path.join(scratch, f"worker-{index}")
    os.makedirs(folder, exist_ok=True)

    def place(folder=folder):
        os.chdir(folder)
        os.environ.update(HOME=folder, DVCFLOW_CLONES=os.path.join(folder, "clones"), CWD_LOG=cwd_log)

    client.run(place, workers=[worker])
print("ready", flush=True)
time.sleep(1200)
"""


CLONE_STAGE_PY = """\
import os, sys, time
name, seconds = sys.argv[1], float(sys.argv[2])
if os.environ.get("CWD_LOG"):
    with open(os.environ["CWD_LOG"], "a") as log:
        log.write(os.getcwd() + "\\n")
time.sleep(seconds)
with open(f"out/{name}.txt", "w") as out:
    out.write(name + "\\n")
"""
CLONE_JOIN_PY = """\
import os
if os.environ.get("CWD_LOG"):
    with open(os.environ["CWD_LOG"], "a") as log:
        log.write(os.getcwd() + "\\n")
parts = sorted(name for name in os.listdir("out") if name.startswith("b") and name.endswith(".txt"))
with open("out/joined.txt", "w") as out:
    out.write("".join(open(f"out/{name}").read() for name in parts))
"""


def make_clone_wide_repo(root: Path, env: dict[str, str], *, branches: int, sleep: float) -> Path:
    """`branch` a `foreach` of independent stages sleeping `sleep` s, `join` after all: outputs that do not
    depend on when or where they ran (so `dvc.lock` can be compared byte for byte). Committed; `out/` kept in
    git, as a clone has only what git has. Used by `bench/bench_dask_clones.py` too."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(CLONE_STAGE_PY)
    (root / "join.py").write_text(CLONE_JOIN_PY)
    (root / "out").mkdir()
    (root / "out" / ".gitkeep").write_text("")
    _init_wide(root, env, [f"b{index}" for index in range(branches)], f"python stage.py ${{item}} {sleep}",
               "stage.py", "out/{}.txt", "out/joined.txt")  # fmt: skip
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", "wide pipeline", env=env)
    return root


def with_clone_remotes(repo: Path, top: Path, env: dict[str, str]) -> None:
    """A bare git remote with the pipeline pushed, a folder as the DVC default remote (committed, pushed)."""
    origin = top / "origin.git"
    origin.mkdir()
    git(origin, "init", "-q", "--bare", "-b", "main", env=env)
    (top / "store").mkdir()
    git(repo, "remote", "add", "origin", str(origin), env=env)
    added = dvc("remote", "add", "-d", "store", str(top / "store"), cwd=repo, env=env)
    assert added.returncode == 0, added.stderr
    git(repo, "commit", "-q", "-am", "the DVC remote", env=env)
    git(repo, "push", "-q", "-u", "origin", "main", env=env)


@contextmanager
def dask_cluster_process(script: str, port: int, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """A Dask cluster started by `script` in its own process (it prints `ready` once it listens on `port`):
    its scheduler's address while the block runs; terminated after it."""
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield f"tcp://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=60)


def basic_auth(user: str, password: str) -> dict[str, object]:
    """`webdav_server`'s settings for one user with a password (basic auth), instead of anonymous access."""
    return {
        "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
        "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
    }


@contextmanager
def webdav_server(root: Path, **auth: object) -> Iterator[str]:
    """A WebDAV server (wsgidav on cheroot) on a free loopback port, in a thread of this process, serving
    `root`: its DVC remote URL (`.../store`) while the block runs. `auth` replaces the anonymous access
    (e.g. `simple_dc=..., http_authenticator=...`)."""
    import threading

    from cheroot import wsgi
    from wsgidav.wsgidav_app import WsgiDAVApp

    (root / "store").mkdir(parents=True)
    config: dict[str, object] = {
        "provider_mapping": {"/": str(root)},
        "simple_dc": {"user_mapping": {"*": True}},  # anonymous: loopback only
        "verbose": 1,
        "logging": {"enable": False},
        **auth,
    }
    server = wsgi.Server(("127.0.0.1", 0), WsgiDAVApp(config))
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield f"webdav://127.0.0.1:{server.bind_addr[1]}/store"
    finally:
        server.stop()
        thread.join(timeout=10)
