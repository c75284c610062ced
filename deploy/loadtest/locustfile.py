"""prism query mixes for Locust. Configured by environment (set by `prism loadtest`):

PRISM_LT_COLLECTION, PRISM_LT_CORPUS (one query per line), PRISM_LT_WRITE_SHARE (0..1),
PRISM_LT_API_KEY / PRISM_LT_API_KEY_HEADER, PRISM_LT_OUT (where partial-answer counts are written),
PRISM_LT_SPACES (JSON: text spaces), PRISM_LT_FILTER (JSON: a filter for the filtered mix),
PRISM_LT_PROTOCOL (http: PrismUser; grpc: PrismGrpcUser, to PRISM_LT_GRPC_TARGET host:port).
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import defaultdict
from pathlib import Path

from locust import HttpUser, User, constant, events

COLLECTION = os.environ.get("PRISM_LT_COLLECTION", "products")
CORPUS = [q.strip() for q in Path(os.environ.get("PRISM_LT_CORPUS", Path(__file__).with_name("queries.txt")))
          .read_text().splitlines() if q.strip()]
WRITE_SHARE = float(os.environ.get("PRISM_LT_WRITE_SHARE", "0"))
SPACES = json.loads(os.environ.get("PRISM_LT_SPACES", '["text"]'))
FILTER = json.loads(os.environ.get("PRISM_LT_FILTER", "null"))
HEADERS = {os.environ.get("PRISM_LT_API_KEY_HEADER", "X-API-Key"): os.environ["PRISM_LT_API_KEY"]} \
    if os.environ.get("PRISM_LT_API_KEY") else {}
_partials: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # name -> [answers, partial answers]
_lock = threading.Lock()
_ids = iter(range(10**12))


def _record(name: str, response) -> None:
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return
    body = response.json()
    answers = body["results"] if "results" in body else [body] if "hits" in body else []
    with _lock:
        for a in answers:
            _partials[name][0] += 1
            _partials[name][1] += bool(a.get("partial"))


def _entry(e) -> dict:
    return {"requests": e.num_requests, "failures": e.num_failures, "qps": round(e.total_rps, 2),
            **{f"p{int(p * 100)}_ms": float(e.get_response_time_percentile(p) or 0) for p in (0.5, 0.95, 0.99)}}


@events.quitting.add_listener
def _write_final(environment, **_kw) -> None:
    """At quitting every user has stopped, so these counts are final. (Locust rewrites locust_stats.csv once a second
    and not again at the end: it can miss the last second of requests.)"""
    out = os.environ.get("PRISM_LT_OUT")
    if out:
        Path(out, "partials.json").write_text(json.dumps({k: {"answers": v[0], "partial": v[1]}
                                                          for k, v in _partials.items()}))
        stats = {e.name: _entry(e) for e in environment.stats.entries.values()}
        Path(out, "final_stats.json").write_text(json.dumps({"types": stats,
                                                             "total": _entry(environment.stats.total)}))


QUERY_MIX = [("text", 4), ("fused", 3), ("filtered", 2), ("batch", 1)]


class Mix:
    """Each step is a write with probability WRITE_SHARE, else a query drawn from QUERY_MIX."""

    def step(self) -> None:
        if random.random() < WRITE_SHARE:
            return self.write()
        mix = [(k, w) for k, w in QUERY_MIX if k != "filtered" or FILTER is not None]
        kind = random.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]
        getattr(self, kind)()

    def text(self) -> None:
        self._query("query:text", "query", {"prefetch": [{"space": SPACES[0], "text": random.choice(CORPUS)}],
                                            "fusion": {"method": "none"}, "limit": 10})

    def fused(self) -> None:
        q = random.choice(CORPUS)
        pre = [{"space": s, "text": q, "limit": 20} for s in SPACES]
        self._query("query:fused", "query", {"prefetch": pre, "limit": 10,
                                             "fusion": {"method": "rrf" if len(pre) > 1 else "none"}})

    def filtered(self) -> None:
        self._query("query:filtered", "query", {"prefetch": [{"space": SPACES[0], "text": random.choice(CORPUS)}],
                                                "fusion": {"method": "none"}, "limit": 10, "filter": FILTER})

    def batch(self) -> None:
        qs = [{"prefetch": [{"space": SPACES[0], "text": random.choice(CORPUS)}], "fusion": {"method": "none"},
               "limit": 5} for _ in range(4)]
        self._query("query:batch", "query/batch", {"queries": qs})

    def write(self) -> None:
        pid = f"loadtest-{os.getpid()}-{next(_ids)}"
        payload = {f: random.choice(CORPUS) for f in ("description", "visual", "name")}
        for name, path, body in (("write:upsert", "points", {"points": [{"id": pid, "payload": payload}]}),
                                 ("write:delete", "points/delete", {"ids": [pid]})):
            self._write(name, path, body)


class PrismUser(Mix, HttpUser):
    """The mix over HTTP."""

    wait_time = constant(0)
    tasks = [Mix.step]  # a plain mixin's @task is not collected: Locust gathers tasks on User classes only
    abstract = os.environ.get("PRISM_LT_PROTOCOL", "http") == "grpc"

    def _query(self, name: str, path: str, body: dict) -> None:
        with self.client.post(f"/v1/collections/{COLLECTION}/{path}", json=body, headers=HEADERS, name=name,
                              catch_response=True) as r:
            _record(name, r)

    def _write(self, name: str, path: str, body: dict) -> None:
        with self.client.post(f"/v1/collections/{COLLECTION}/{path}", json=body, headers=HEADERS, name=name,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")


class PrismGrpcUser(Mix, User):
    """The same mix over gRPC, through prism's client (Locust's custom-client pattern: each call fires `request`)."""

    abstract = os.environ.get("PRISM_LT_PROTOCOL", "http") != "grpc"
    wait_time = constant(0)
    tasks = [Mix.step]

    def on_start(self) -> None:
        from cluster.client import PrismClient

        self.rpc = PrismClient(f"grpc://{os.environ['PRISM_LT_GRPC_TARGET']}",
                               api_key=os.environ.get("PRISM_LT_API_KEY") or None)

    def on_stop(self) -> None:
        self.rpc.close()

    def _fire(self, name: str, call) -> dict | None:
        t0, exc, answer = time.perf_counter(), None, None
        try:
            answer = call()
        except Exception as e:  # noqa: BLE001 - every failure is reported to Locust as the request's failure
            exc = e
        self.environment.events.request.fire(request_type="grpc", name=name, context={}, exception=exc,
                                             response_time=(time.perf_counter() - t0) * 1000,
                                             response_length=0, response=answer)
        return answer

    def _query(self, name: str, path: str, body: dict) -> None:
        if path == "query/batch":
            answer = self._fire(name, lambda: self.rpc.query_batch(COLLECTION, body["queries"]))
        else:
            answer = self._fire(name, lambda: self.rpc.query(COLLECTION, body))
        if answer is not None:
            answers = answer["results"] if "results" in answer else [answer]
            with _lock:
                for a in answers:
                    _partials[name][0] += 1
                    _partials[name][1] += bool(a.get("partial"))

    def _write(self, name: str, path: str, body: dict) -> None:
        if path == "points":
            self._fire(name, lambda: self.rpc.upsert(COLLECTION, body["points"]))
        else:
            self._fire(name, lambda: self.rpc.delete(COLLECTION, ids=body["ids"]))
