"""API keys: their format, salted hashes, roles and collection scopes, and where they are kept. Pure: no I/O but
the keys file, no framework.

A key reads `prism_<id>_<secret>`: `id` (8 hex digits) names the key in logs, files and `prism keys list`; only
`sha256(salt || secret)` of the 192-bit random secret is ever stored. A slow password hash (scrypt, bcrypt) adds
nothing against guessing a secret of that size and would cost milliseconds on every request.

Roles nest: read (queries, GETs) < write (read + upserts, deletes, vector updates) < admin (everything:
collections, reshard). A key may be scoped to some collections; it then sees and touches only those.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cluster.errors import ConfigError
from cluster.names import name_problem

Role = Literal["read", "write", "admin"]
ROLE_RANK = {"read": 0, "write": 1, "admin": 2}
KEY_PREFIX = "prism"
KEYS_FILE = "api-keys.json"
KEYS_ENV = "PRISM_API_KEYS"  # a JSON list of key records (hashes, never keys): how a Kubernetes Secret hands them in
# One plaintext admin key, as the Helm chart generates it into a Secret on first install (Elasticsearch 8 does the
# same with its `elastic` password): hashed with a fresh salt when loaded, never written anywhere by prism.
ADMIN_KEY_ENV = "PRISM_ADMIN_KEY"
_log = logging.getLogger("prism.auth")
MIN_SECRET_CHARS = 24  # a plaintext key handed in must carry at least ~140 random bits, as new_key's (32 characters)


class KeyRecord(BaseModel):
    """One stored key: never the key itself, only its id, salt and hash."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{8}$")
    role: Role
    collections: list[str] | None = None  # None: every collection
    salt: str = Field(pattern=r"^[0-9a-f]{32}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: float = 0.0
    label: str | None = None

    @field_validator("collections")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("collections must name at least one collection (omit it for all)")
        for name in value or ():
            problem = name_problem(name)
            if problem:
                raise ValueError(problem)
        return value


class Principal(BaseModel):
    """Who a request comes from: a key's id, role and scope."""

    key_id: str
    role: Role
    collections: list[str] | None = None

    def allows(self, role: Role, collection: str | None) -> bool:
        if ROLE_RANK[self.role] < ROLE_RANK[role]:
            return False
        return collection is None or self.collections is None or collection in self.collections


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def new_key(role: Role, collections: list[str] | None = None, label: str | None = None,
            clock: Callable[[], float] = time.time) -> tuple[str, KeyRecord]:
    """A fresh key (shown once) and the record that is stored instead of it."""
    kid, secret, salt = secrets.token_hex(4), secrets.token_urlsafe(24), secrets.token_hex(16)
    record = KeyRecord(id=kid, role=role, collections=collections, salt=salt, hash=_digest(salt, secret),
                       created=round(clock(), 3), label=label)
    return f"{KEY_PREFIX}_{kid}_{secret}", record


def split_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyRing:
    """The keys in force, by id. Verification compares hashes in constant time."""

    def __init__(self, records: Iterable[KeyRecord] = ()):
        self.records = {r.id: r for r in records}

    def __len__(self) -> int:
        return len(self.records)

    def verify(self, key: str) -> Principal | None:
        parsed = split_key(key)
        record = self.records.get(parsed[0]) if parsed else None
        if record is None:
            # Same work as a real check, so timing does not tell a wrong id from a wrong secret.
            hmac.compare_digest(_digest("00" * 16, parsed[1] if parsed else key), "0" * 64)
            return None
        if not hmac.compare_digest(_digest(record.salt, parsed[1]), record.hash):
            return None
        return Principal(key_id=record.id, role=record.role, collections=record.collections)


def client_headers(key: str | None) -> dict[str, str]:
    """What a client sends with a key (nothing without one)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure(host: str, port: int, keys: int, insecure: bool, keys_file_exists: bool = False) -> str:
    """The line `prism up` prints about access control; ConfigError when it must refuse to start: no keys on a
    non-loopback address without --insecure. A keys file that exists but holds no key (every key revoked) keeps
    auth on, on loopback too: keys were chosen, and a restart must not open the API."""
    if keys:
        return f"auth: on ({keys} API key{'s' if keys != 1 else ''}); /health and /docs stay open"
    if keys_file_exists and is_loopback(host) and not insecure:
        return ("auth: on, but no API key exists (the keys file holds none: every key was revoked): every request "
                "is refused with 401 until `prism keys create` makes one (delete the keys file to serve without "
                "keys)")
    if is_loopback(host):
        return (f"auth: off (no API keys; listening on {host} only). Create one with `prism keys create --role "
                "admin` to require keys")
    if insecure:
        return (f"WARNING: auth is off and {host} is not a loopback address: anyone who reaches port {port} may "
                "read, write and delete every collection (--insecure)")
    raise ConfigError(f"refusing to serve on {host!r} without API keys: anyone who reaches port {port} could read, "
                      "write and delete every collection. Create a key (`prism keys create --role admin`), bind "
                      "127.0.0.1, or pass --insecure to accept the risk", field="host")


def keys_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).expanduser().resolve() / KEYS_FILE


def read_keys_file(path: str | os.PathLike) -> list[KeyRecord]:
    p = Path(path)
    if not p.exists():
        return []
    try:
        raw = json.loads(p.read_text() or "{}")
        return [KeyRecord.model_validate(r) for r in raw.get("keys", [])]
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"keys file {str(p)!r} is not a valid prism keys file: {exc}", field="auth.keys_file") from None


def write_keys_file(path: str | os.PathLike, records: Iterable[KeyRecord]) -> None:
    """Replace the keys file atomically, readable by its owner only (it holds hashes, but still): the new file is
    created 0600 (O_EXCL, a fresh name), so it is never readable by others, not even before it is complete."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"keys": [r.model_dump(exclude_none=True) for r in records]}, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_for_key(key: str, role: Role, label: str | None = None, field: str = ADMIN_KEY_ENV) -> KeyRecord:
    """The stored form of a key handed in as plaintext (a fresh salt; the key itself is not kept)."""
    parsed = split_key(key.strip())
    if parsed is None or not re.fullmatch(r"[0-9a-f]{8}", parsed[0]) or len(parsed[1]) < MIN_SECRET_CHARS:
        raise ConfigError(f"{field} must be a key of the form prism_<8 hex digits>_<at least {MIN_SECRET_CHARS} "
                          "characters> (the chart's generated Secret holds one)", field=field)
    salt = secrets.token_hex(16)
    return KeyRecord(id=parsed[0], role=role, salt=salt, hash=_digest(salt, parsed[1]), label=label)


def env_keys(environ: dict[str, str] | None = None) -> list[KeyRecord]:
    """Key records from PRISM_API_KEYS (JSON records) and PRISM_ADMIN_KEY (one plaintext admin key)."""
    env = os.environ if environ is None else environ
    out: list[KeyRecord] = []
    raw = env.get(KEYS_ENV, "").strip()
    if raw:
        try:
            data = json.loads(raw)
            out = [KeyRecord.model_validate(r) for r in (data["keys"] if isinstance(data, dict) else data)]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{KEYS_ENV} must be a JSON list of key records (`prism keys export` prints one): "
                              f"{exc}", field=KEYS_ENV) from None
    admin = env.get(ADMIN_KEY_ENV, "").strip()
    if admin:
        out.append(record_for_key(admin, "admin", label="generated admin key (PRISM_ADMIN_KEY)"))
    return out


class KeySource:
    """The keys in force: configured records, PRISM_API_KEYS, and the keys file, which is re-read when it changes
    (checked at most every `recheck_s`, on an injected clock), so keys are created and revoked without a restart.

    A keys file that cannot be read at start is a ConfigError (the server does not start); one that stops being
    readable later (a bad edit, a half-written copy) counts as holding no key until it reads again: the keys read
    before it may include revoked ones, so they are not kept. `problem` says why (for the log, never a client)."""

    def __init__(self, configured: Iterable[KeyRecord], keys_file: str | os.PathLike | None,
                 environ: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic,
                 recheck_s: float = 1.0):
        self.fixed = [*configured, *env_keys(environ)]
        self.file = Path(keys_file) if keys_file else None
        self.clock, self.recheck_s = clock, recheck_s
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self.ring = KeyRing(self.fixed)
        self.problem: str | None = None
        self._started = False  # at start a file that cannot be read is raised: the server must not start on it
        self.refresh(force=True)
        self._started = True

    def refresh(self, force: bool = False) -> KeyRing:
        now = self.clock()
        if self.file is None or (not force and now - self._checked < self.recheck_s):
            return self.ring
        self._checked = now
        try:
            st = self.file.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or force:
            self._stamp = stamp
            try:
                self.ring = KeyRing([*self.fixed, *(read_keys_file(self.file) if stamp else [])])
                self.problem = None
            except (ConfigError, OSError) as exc:
                if not self._started:
                    raise
                self.ring = KeyRing(self.fixed)
                self.problem = getattr(exc, "message", None) or str(exc)
                _log.error("%s; until it reads again only keys from the config and the environment are valid",
                           self.problem)
        return self.ring

    @property
    def file_exists(self) -> bool:
        return self.file is not None and self.file.exists()
