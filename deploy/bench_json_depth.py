"""The body depth check before and after issue 33 (`python -m deploy.bench --only json_depth`).

The check runs on every JSON body before it is parsed, holding the GIL. The old one tokenised with a regex that
rescanned an unterminated string from every quote: quadratic, 3.8 s for 32 KB of the issue's body. The new one
(router.schema.bodies.json_too_deep) is linear. Both run here, in this process, on the same bodies: the issue's
adversarial one (`{` x 65 then an unterminated run of `\\"` pairs), a body of a million `[]` pairs, and an
ordinary 8 MB upsert (2,000 points of 384 floats). The old check is run only up to 32 KB (seconds there, hours at 1 MB).
Writes docs/bench/json_depth.json.
"""
from __future__ import annotations

import json
import re
import statistics
import time

from deploy.benchlib import machine, write_json

OLD_SIZES = (8 << 10, 16 << 10, 32 << 10)
NEW_SIZES = (8 << 10, 32 << 10, 1 << 20, 8 << 20)
TARGET = "a 1 MB adversarial body is judged in well under a second (the old check took 134 s live)"


def old_json_too_deep(raw: bytes, limit: int = 64) -> bool:
    """The check as it was before issue 33, kept here as the baseline (router.schema.bodies holds the new one)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for tok in re.findall(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', raw):
        if tok in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif tok in (b"]", b"}"):
            depth -= 1
    return False


def adversarial(size: int) -> bytes:
    return b"{" * 65 + b'"' + b'\\"' * (size // 2)


def _ms(check, raw: bytes, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        check(raw)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def run(workdir=None) -> dict:
    from router.schema.bodies import json_too_deep

    json_too_deep(b"[" * 100)  # numpy imported once, outside the timings
    rows = []
    for size in sorted(set(OLD_SIZES) | set(NEW_SIZES)):
        raw = adversarial(size)
        rows.append({"body": "adversarial", "bytes": len(raw), "new_ms": _ms(json_too_deep, raw, 5),
                     "old_ms": _ms(old_json_too_deep, raw, 1) if size in OLD_SIZES else None})
    pairs = b"[]" * 1_000_000 + b"[" * 65
    rows.append({"body": "1M [] pairs", "bytes": len(pairs), "new_ms": _ms(json_too_deep, pairs, 3),
                 "old_ms": _ms(old_json_too_deep, pairs, 1)})
    upsert = json.dumps({"points": [{"id": str(i), "vectors": {"v": [0.1234567] * 384}}
                                    for i in range(2000)]}).encode()
    rows.append({"body": "upsert 2,000 x 384", "bytes": len(upsert), "new_ms": _ms(json_too_deep, upsert, 3),
                 "old_ms": _ms(old_json_too_deep, upsert, 1), "json_loads_ms": _ms(json.loads, upsert, 3)})
    return {"rows": rows, "target": TARGET}


def table(payload: dict) -> str:
    out = ["| body | bytes | old check ms | new check ms |", "|---|---|---|---|"]
    for r in payload["rows"]:
        old = "not run (quadratic: hours)" if r["old_ms"] is None else r["old_ms"]
        out.append(f"| {r['body']} | {r['bytes']:,} | {old} | {r['new_ms']} |")
    up = next((r for r in payload["rows"] if "json_loads_ms" in r), None)
    if up:
        out += ["", f"For scale: parsing that upsert with json.loads takes {up['json_loads_ms']} ms."]
    return "\n".join(out)


if __name__ == "__main__":
    write_json("json_depth", {"machine": machine(), **run()})
