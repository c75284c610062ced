"""Local real services started as subprocesses: the bundled Milvus 2.3 standalone and the Elasticsearch-API
server (noida-db).

Each runs in its own process group (start_new_session) and is stopped by signalling the whole group: the Milvus
wrapper forks the real server binary, and killing only the wrapper leaves it running.
"""
from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import BackendError

MILVUS_READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ports for services that start late (HAProxy's side listeners): a band no one hands out at random. Below it lie
# Ray's worker ports (10002-19999), above it Serve's direct-ingress ports (30000-31000) and the kernel's ephemeral
# range (32768+), from which every bind(0) (free_port, Ray's own components) draws.
SIDE_PORTS = (20000, 29999)


def side_port(rng: random.Random | None = None) -> int:
    """A port free on every interface, from SIDE_PORTS: unlike free_port's, it cannot be taken by some other
    process's bind(0) between now and the moment its service starts."""
    rng = rng or random.Random()
    for _ in range(200):
        port = rng.randint(*SIDE_PORTS)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise BackendError(f"no free port in {SIDE_PORTS[0]}-{SIDE_PORTS[1]}")


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "service") -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BackendError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001
            last = str(exc)
        time.sleep(0.1)  # poll: ready within the deadline
    raise BackendError(f"{what} not ready at {url} after {timeout_s:.0f}s ({last})")


def stop_process_group(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM the group led by `pid`, wait, then SIGKILL whatever is left.

    Every process prism starts is a session leader (start_new_session), so its group id is its pid. The group
    is signalled even after the leader has exited: Ray's agents outlive the driver that started them.
    """
    pgid = pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)  # poll: the group exiting, with a deadline
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of our own children still count as members; reap what we can.
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
            if pid == 0:
                break
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@dataclass
class ServiceHandle:
    """A started subprocess service: its pid (= process group id), address and health URL."""

    name: str
    pid: int
    uri: str
    health_url: str
    log_path: str
    token: str | None = None  # credentials clients pass (a Milvus started with auth)

    def stop(self) -> None:
        stop_process_group(self.pid)

    def kill(self) -> None:
        """Gone at once, as in a crash: SIGKILL to its whole group (then reaped)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        stop_process_group(self.pid, timeout_s=5.0)


def _start(name: str, cmd: list[str], log_path: Path, uri: str, health_url: str, timeout_s: float,
           what: str, env: dict[str, str] | None = None) -> ServiceHandle:
    """Spawn `cmd` in its own session (its pid is its group id), logging to `log_path`, and wait until healthy."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    handle = ServiceHandle(name, proc.pid, uri, health_url, str(log_path))
    try:
        wait_http_ok(health_url, timeout_s, proc, what)
    except BaseException:
        handle.stop()
        raise
    return handle


def start_milvus_server(data_dir: str | os.PathLike, port: int | None = None, health_port: int | None = None,
                        timeout_s: float = MILVUS_READY_TIMEOUT_S, time_tick_ms: int | None = None,
                        auth: bool = False) -> ServiceHandle:
    """Start the PyPI `milvus` package's Milvus 2.3 standalone; ready when its /healthz answers 200.

    `auth`: the server requires credentials; root's password is generated on first start and kept in
    DATA_DIR/root-password (0600), and the handle's `token` ("root:<password>") is what clients pass."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    health_port = health_port or free_port()
    tick = [str(time_tick_ms)] if time_tick_ms else []
    cmd = [sys.executable, "-m", "cluster.milvus_launcher", str(data), str(port), str(health_port), *tick]
    handle = _start("milvus", cmd, data / "prism-milvus-launcher.log", f"http://127.0.0.1:{port}",
                    f"http://127.0.0.1:{health_port}/healthz", timeout_s, "Milvus server",
                    env={"PRISM_MILVUS_AUTHORIZATION": "1" if auth else "0"})
    if auth:
        try:
            handle.token = f"root:{milvus_root_password(handle.uri, data / MILVUS_PASSWORD_FILE)}"
        except BaseException:
            handle.stop()
            raise
    return handle


MILVUS_PASSWORD_FILE = "root-password"
MILVUS_DEFAULT_ROOT = "Milvus"  # what every Milvus starts with: replaced at once


def milvus_root_password(uri: str, path: Path, timeout_s: float = 60.0) -> str:
    """root's password of the server at `uri`: the one kept at `path`; on first start a new random one replaces
    Milvus's well-known default (written to `path`, 0600, before it is set, so a crash cannot lose it)."""
    import grpc
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    os.chmod(path, 0o600)
    password = path.read_text().strip()
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        for current in (password, MILVUS_DEFAULT_ROOT):
            try:
                client = MilvusClient(uri=uri, token=f"root:{current}", timeout=10)
            except (MilvusException, grpc.RpcError) as exc:  # the proxy not serving yet
                last = str(exc)
                continue
            try:
                client.list_collections()  # the credentials are checked by the first call, not by connecting
                if current != password:
                    client.update_password("root", current, password)
                return password
            except (MilvusException, grpc.RpcError) as exc:  # not this password (or not serving yet)
                last = str(exc)
            finally:
                client.close()
        time.sleep(0.5)  # poll: the proxy answers /healthz a little before it authenticates
    raise BackendError(f"cannot authenticate to the Milvus server at {uri} as root with the password in {path} "
                       f"({last})")


def noida_binary() -> str:
    """The ES-API server binary shipped inside the PyPI package `noida-db`."""
    from importlib.resources import files

    path = files("noida_db").joinpath("noida-db")
    if not path.is_file():
        raise BackendError(f"noida-db binary not found at {path}; is the package installed?")
    os.chmod(str(path), 0o755)
    return str(path)


def start_elasticsearch(data_dir: str | os.PathLike, port: int | None = None,
                        timeout_s: float = 60.0) -> ServiceHandle:
    """Start noida-db's Elasticsearch API only; ready when `GET /` answers 200. Data persists in data_dir."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    return _start("elasticsearch",
                  [noida_binary(), "start", "--only", "elasticsearch", "--elasticsearch-port", str(port),
                   "--host", "127.0.0.1", "--data-dir", str(data)],
                  data / "prism-noida.log", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/", timeout_s,
                  "Elasticsearch API server (noida-db)")


@dataclass
class RayNode:
    """A Ray node started with `ray start` in its own process group (raylet, object store, agents, workers)."""

    pid: int          # the group: `ray start` exits once the node is up, its processes keep the group id
    address: str      # the cluster's GCS address (host:port)
    head: bool
    log_path: str

    def kill(self) -> None:
        """The node gone at once, as when a machine dies: SIGKILL to every process of its session (Ray's worker
        processes make process groups of their own, but stay in the session `ray start` began)."""
        deadline = time.monotonic() + 15
        while (members := session_members(self.pid)) and time.monotonic() < deadline:
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass

    def stop(self) -> None:
        """Stopped for good. These are test and benchmark clusters: nothing to drain, and a SIGTERMed head takes
        ~15 s to exit (measured), so it is the same as `kill`."""
        self.kill()


def _members(index: int, value: int) -> list[int]:
    """Pids of the live (not zombie) processes whose /proc stat field `index` (after the command name: 0 state,
    1 ppid, 2 process group, 3 session) equals `value`. Linux only."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[index]) == value:
            out.append(int(entry))
    return out


def session_members(sid: int) -> list[int]:
    """Pids of the live processes in session `sid` (what `ray start` began, its workers included)."""
    return _members(3, sid)


RAY_TOKEN_ENV, RAY_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def ray_token_file(environ: dict[str, str] | None = None, home: str | os.PathLike | None = None) -> Path | None:
    """The file Ray reads its control-plane token from: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; None when
    RAY_AUTH_TOKEN carries the token itself."""
    env = os.environ if environ is None else environ
    if env.get(RAY_TOKEN_ENV):
        return None
    if env.get(RAY_TOKEN_PATH_ENV):
        return Path(env[RAY_TOKEN_PATH_ENV]).expanduser()
    return Path(home if home is not None else Path.home()) / ".ray" / "auth_token"


def secure_ray_token(environ: dict[str, str] | None = None, home: str | os.PathLike | None = None) -> Path | None:
    """Make Ray's token file readable by its owner only, creating it (0600 from the first byte) when absent.

    Ray 2.60 writes the token it generates for a new local cluster with the process umask (0644 measured), so any
    local user could read it and run code through Ray's control plane. Called before `ray.init`: Ray then finds
    the token and uses it. Returns the file (None when the token comes from RAY_AUTH_TOKEN)."""
    env = os.environ if environ is None else environ
    path = ray_token_file(env, home)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    if not env.get(RAY_TOKEN_PATH_ENV):  # ~/.ray is Ray's own directory: nobody else lists it either
        os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))  # what Ray's own generator makes: 256 random bits, hex
    return path


def ray_cluster_env(token: str) -> dict[str, str]:
    """Environment of every process of a local multi-node Ray cluster: token authentication with one shared token,
    and a GCS that declares a silent node dead within ~1.5 s (Ray's default: ~15 s)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "500"}


def start_ray_node(temp_dir: str | os.PathLike, token: str, *, address: str | None = None, num_cpus: int = 1,
                   timeout_s: float = 120.0) -> RayNode:
    """`ray start --head` (address None: on a free port) or `ray start --address ADDRESS` (a worker node), on
    127.0.0.1, with its own sockets and logs under `temp_dir` (keep the path short: Unix socket paths are capped
    at 107 bytes)."""
    temp = Path(temp_dir)
    temp.mkdir(parents=True, exist_ok=True)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_bin, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--disable-usage-stats"]
    if address is None:
        address = f"127.0.0.1:{free_port()}"
        cmd += ["--head", "--port", address.rsplit(":", 1)[1], "--include-dashboard", "false", "--temp-dir", str(temp)]
    else:
        cmd += ["--address", address]
    log_path = temp / f"ray-start-{'head' if '--head' in cmd else 'worker'}-{time.time_ns()}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **ray_cluster_env(token)})
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop_process_group(proc.pid)
        raise BackendError(f"ray start did not finish within {timeout_s:.0f}s; see {log_path}") from None
    if rc != 0:
        stop_process_group(proc.pid)
        raise BackendError(f"ray start exited with code {rc}; see {log_path}:\n{log_path.read_text()[-2000:]}")
    return RayNode(proc.pid, address, "--head" in cmd, str(log_path))
