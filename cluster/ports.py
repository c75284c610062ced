"""Serve's direct-ingress ports, one block per `prism up` on a host.

With HAProxy (prism's default ingress) every ingress replica runs its own HTTP and gRPC servers, on ports Serve
hands out from fixed ranges (HTTP from 30000, gRPC from 40000: RAY_SERVE_DIRECT_INGRESS_{MIN,MAX}_{HTTP,GRPC}_PORT),
the same ranges for every Serve on the host. Serve asks gRPC not to share ports, but passes the option as a
string, which gRPC ignores: the second instance's replica binds the first one's gRPC port too (SO_REUSEPORT), and
the kernel spreads each instance's gRPC connections over both, so two instances answered each other's calls.

So each `prism up` claims its own block of ports from DIRECT_INGRESS_PORTS: whole slots of SLOT ports, held by
an advisory lock on a file per slot (flock: let go when the process ends, however it ends), every port of the
block free when claimed. Two instances never hold the same slot; a port something else holds is skipped.
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import random
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cluster.errors import BackendError

# Between the side ports (cluster.services.SIDE_PORTS, 20000-29999) and the kernel's ephemeral range (32768+),
# from which every bind(0) draws: nothing hands these out at random.
DIRECT_INGRESS_PORTS = (30000, 32767)
SLOT = 16
ENV_NAMES = ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
             "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT")


def lock_dir() -> Path:
    """Where the slot locks of every prism on this host live."""
    return Path(tempfile.gettempdir()) / "prism-ports"


def ports_needed(replicas: int) -> int:
    """Ports per protocol for up to `replicas` ingress replicas on one host: Serve keeps a stopped replica's port
    out of use for a while (quarantine), so a replaced replica takes a new one; twice the count, plus two."""
    return 2 * replicas + 2


@dataclass
class PortBlock:
    """Ranges as Serve reads them: [min, max) (its allocator hands out range(min, max))."""

    http: tuple[int, int]
    grpc: tuple[int, int]
    _locks: list[IO] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        values = (*self.http, *self.grpc)
        return {name: str(v) for name, v in zip(ENV_NAMES, values)}

    def describe_ranges(self) -> str:
        return f"HTTP {self.http[0]}-{self.http[1] - 1}, gRPC {self.grpc[0]}-{self.grpc[1] - 1}"

    def release(self) -> None:
        for f in self._locks:
            f.close()  # closing the file lets go of its lock
        self._locks.clear()


def _lock(path: Path) -> IO | None:
    """The slot's lock, held through the returned file; None when another process holds it."""
    f = open(os.open(path, os.O_RDONLY | os.O_CREAT, 0o644))  # any user can lock a file it can read
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _free(port: int) -> bool:
    """Nothing listens on `port` on any interface, IPv4 or IPv6 (gRPC binds [::], which covers both)."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # a host without IPv6
            continue
        with contextlib.closing(s):
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def claim_direct_ingress_ports(replicas: int, *, where: Path | None = None, band: tuple[int, int] = DIRECT_INGRESS_PORTS,
                               rng: random.Random | None = None) -> PortBlock:
    """A block for this instance: ports_needed(replicas) or more per protocol, HTTP's slots then gRPC's, held
    until `release()` or the end of this process. BackendError when the band has no free block."""
    where = where or lock_dir()
    where.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by every user of the host; only its creator can widen it
        where.chmod(0o1777)
    per = math.ceil(ports_needed(replicas) / SLOT)  # slots per protocol
    slots = (band[1] + 1 - band[0]) // SLOT
    starts = list(range(0, slots - 2 * per + 1))
    (rng or random.Random()).shuffle(starts)  # instances starting together try different blocks first
    for first in starts:
        held = []
        for k in range(first, first + 2 * per):
            f = _lock(where / f"slot-{band[0] + k * SLOT}.lock")
            if f is None:
                break
            held.append(f)
        lo, mid, hi = (band[0] + (first + i * per) * SLOT for i in range(3))
        if len(held) == 2 * per and all(_free(p) for p in range(lo, hi)):
            return PortBlock(http=(lo, mid), grpc=(mid, hi), _locks=held)
        for f in held:
            f.close()
    raise BackendError(f"no free block of {2 * per * SLOT} ports for Serve's direct ingress in {band[0]}-{band[1]} "
                       f"(locks in {where})")


def direct_ingress_from_environment(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The ranges an operator set (any of the four variables), which then stand as set; None when none is set."""
    env = os.environ if environ is None else environ
    given = {k: env[k] for k in ENV_NAMES if env.get(k)}
    return given or None
