"""Regenerates docs/benchmarks.md (tables + PNG plots) from the machine-readable docs/bench/*.json."""
from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load(name: str) -> dict | None:
    path = DOCS / "bench" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine_line(m: dict) -> str:
    return f"{m['date']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}, Python {m['python']}, no GPU"


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _finish(fig, plt, machine: dict, name: str, top: float = 1.0) -> str:
    """Every figure states the machine and date; saved under docs/bench/."""
    fig.text(0.01, 0.01, _machine_line(machine), fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, top))
    fig.savefig(DOCS / "bench" / name, dpi=110)
    plt.close(fig)
    return name


def _plot_core(core: dict) -> str | None:
    plt = _plt()
    if plt is None:
        return None
    runs = [r for r in core["runs"] if r["n"] == max(q["n"] for q in core["runs"])]
    labels = [r["backend"] for r in runs]
    x = range(len(runs))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([i - 0.2 for i in x], [r["baseline_p50_ms"] for r in runs], 0.4, label="baseline: sequential, one process")
    ax.bar([i + 0.2 for i in x], [r["p50_ms"] for r in runs], 0.4, label="prism: parallel fan-out (Ray)")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("p50 latency, ms (lower is better)")
    n = runs[0]["n"]
    ax.set_title(f"2-prefetch RRF query, {n:,} points x 2 spaces, {runs[0]['shards']} shards", fontsize=9)
    ax.legend(fontsize=7)
    return _finish(fig, plt, core["machine"], "core_p50.png", top=1)


def _plot_filters(f: dict) -> str | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sels = sorted({r["selectivity_pct"] for r in f["runs"]})
    for i, plan in enumerate(("pushdown", "prefilter", "postfilter")):
        vals = [next((r.get("p50_ms", 0) for r in f["runs"] if r["plan"] == plan and r["selectivity_pct"] == s), 0)
                for s in sels]
        ax.bar([x + (i - 1) * 0.27 for x in range(len(sels))], vals, 0.27, label=plan)
    ax.axhline(f["unfiltered_p50_ms"], color="black", linestyle="--", linewidth=1, label="unfiltered (baseline)")
    ax.set_xticks(range(len(sels)), [f"{s}% match" for s in sels])
    ax.set_yscale("log")
    ax.set_ylabel("p50 latency, ms (log)")
    ax.set_title(f"Filtered top-10, {f['n']:,} points, {f['shards']} shards, per plan path", fontsize=9)
    ax.legend(fontsize=7)
    return _finish(fig, plt, f["machine"], "filters_p50.png", top=1)


def _plot_serving(sv: dict) -> str | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    cs = [1, 8, 32]
    ax.plot(cs, [sv[f"qps_c{c}"] for c in cs], marker="o", label="prism HTTP text queries (QPS)")
    ax.axhline(sv["encode_per_s"], color="black", linestyle="--", linewidth=1,
               label="raw MiniLM batched encode, one process (texts/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("per second")
    ax.set_title(f"End-to-end text query throughput, {sv['n']:,} points", fontsize=9)
    ax.legend(fontsize=7)
    return _finish(fig, plt, sv["machine"], "serving_qps.png", top=1)


def _plot_scaling(sc: dict) -> str | None:
    plt = _plt()
    if plt is None:
        return None
    runs = sc["runs"]
    by_n = sorted((r for r in runs if r["shards"] == 4), key=lambda r: r["n"])
    big = max(r["n"] for r in runs)
    by_s = sorted((r for r in runs if r["n"] == big), key=lambda r: r["shards"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    a.plot([r["n"] for r in by_n], [r["p50_ms"] for r in by_n], marker="o", label="p50")
    a.plot([r["n"] for r in by_n], [r["p99_ms"] for r in by_n], marker="o", label="p99")
    a.set_xticks([r["n"] for r in by_n], [f"{r['n'] // 1000}k" for r in by_n])
    a.set_xlabel("points (4 shards)")
    a.set_ylabel("latency, ms")
    a.legend(fontsize=7)
    b.plot([r["shards"] for r in by_s], [r["p50_ms"] for r in by_s], marker="o", label="p50 ms")
    b.plot([r["shards"] for r in by_s], [r["qps_c8"] for r in by_s], marker="s", label="QPS c=8")
    b.set_xticks([r["shards"] for r in by_s])
    b.set_xlabel(f"shards ({big:,} points)")
    b.legend(fontsize=7)
    fig.suptitle("How query cost grows (milvus-lite, Ray actors, 384-d HNSW)", fontsize=9)
    return _finish(fig, plt, sc["machine"], "scaling.png", top=0.95)


# Sections whose module renders its own table: (json name, module, title, what was measured and how).
SECTIONS = [
    ("sizing", "deploy.bench_sizing", "Sizing: Milvus memory per million vectors", lambda d: (
        "One collection on the bundled Milvus 2.3 standalone, loaded and fully indexed at two sizes; memory per "
        "million is the slope between them, (RSS at the larger - RSS at the smaller) / the points added, RSS of the "
        "server's process group, so its start-up memory cancels. Baseline: the raw float32 size."
        if d.get("method") == "slope" else
        "One collection on the bundled Milvus 2.3 standalone, loaded and fully indexed; RSS of the server process "
        "group after minus before, scaled to one million vectors (start-up memory included). Baseline: the raw "
        "float32 size.")),
    ("scale1m", "deploy.bench_scale1m", "A million points, once", lambda d: (
        f"{d['points']:,} x {d['dim']} points (Gaussian mixture), {d['shards']} shards on the bundled Milvus server, "
        "through PrismService in process; per index: insert time, the wait until every replica's index is built and "
        f"loaded, p50 at c=1 and QPS at c=8 over {d['queries']} vector queries (top 10, no payload, cache off), "
        "recall@10 against exact search (numpy) over the same points, and memory per million from the slope of the "
        f"server's RSS between {d['points_small']:,} and {d['points']:,} points. Made by "
        "`python -m deploy.bench --only scale1m` (deploy/bench_scale1m.py); run once, it takes about an hour.")),
    ("freshness", "deploy.bench_freshness", "Freshness: reads while others write", lambda d: (
        "20,000 points (384-d, HNSW), 2 shards, in-process shards; readers at c=1 and c=8 for 8 s each while a "
        "writer sends 0, 5 or 50 points/s (batches of 10, wait=true, open loop). Reads are `bounded` (the "
        "default); writers with wait=true read their write back at Strong once per space per batch, so they pay "
        f"the time tick, not the readers. Target: {d['targets']}.")),
    ("batching", "deploy.bench_batching", "Micro-batching: concurrent queries share shard calls", lambda d: (
        "50,000 points (384-d, HNSW), 4 shards as Ray actors, vector queries (top 10, no payload, cache off) "
        f"through the coordinator at c=1 and c=32, batching off and on in the same run. Target: {d['target']}.")),
    ("tiny", "deploy.bench_tiny", "The sample catalog over HTTP, beside the framework's floor", lambda d: (
        "`prism up` with deploy/demo.yaml (milvus-lite, 2 shards) holding the 64-product catalog, against a no-op "
        "Ray Serve app of the same shape (FastAPI ingress, one call per shard actor), same run, behind each HTTP "
        "ingress (HAProxy, the default, and Serve's Python proxy); cache off, distinct queries. This machine's c=1 "
        "latencies vary by several ms between runs: compare rows of one run, and see the notes below for two runs.")),
    ("auth", "deploy.bench_auth", "Access control: the cost of API keys and rate limits", lambda d: (
        "`prism up` (milvus-lite, 2 shards, FLAT, 2,000 x 64-d points), vector queries (top 10, no payload, cache "
        "off) at c=1 over HTTP; rounds alternate auth off (no key anywhere) and on (an API key required and "
        "sent), the keys file switched while prism runs, rate limits configured (never binding) in both. "
        f"Target: {d['target']}.")),
    ("stages", "deploy.bench_stages", "Post-fusion stages: what formula, MMR and group_by cost", lambda d: (
        f"{d['points']:,} points, {d['shards']} shards (milvus-lite, HNSW, in process), two {d['dim']}-d vector "
        "spaces and a bm25 space over a short description (the bundled Elasticsearch API server); a bm25 + 2 vector "
        "RRF query (limit 10, cache off) with no stage and with formula -> MMR -> group_by, interleaved query by "
        f"query. Target: {d['target']}.")),
    ("grpc", "deploy.bench_grpc", "gRPC beside HTTP: the same queries through both front doors", lambda d: (
        "`prism up` with deploy/demo.yaml (milvus-lite, 2 shards, HNSW) holding the 64-product catalog; vector "
        "queries (384-d, top 5, payloads) and text queries (distinct texts, MiniLM per query), cache off, at c=1 "
        "(p50) and c=8 (QPS) over HTTP and over gRPC in the same run, rounds alternating which goes first.")),
    ("qdrant", "deploy.bench_qdrant", "The Qdrant-compatible API beside prism's own", lambda d: (
        f"`prism up` (milvus-lite, {d['shards']} shards, Elasticsearch off) holding one collection made through "
        f"/qdrant: {d['points']:,} points, two {d['dim']}-d Cosine vectors (HNSW, Qdrant's defaults), a small "
        "payload. The same queries (distinct vectors, payloads) through `/qdrant/.../points/query` and "
        "`/v1/.../query`, one httpx client for both, at c=1 (p50) and c=8 (QPS); rounds alternate which API goes "
        "first.")),
    ("json_depth", "deploy.bench_json_depth", "The body depth check: quadratic before issue 33, linear now", lambda d: (
        "The check every JSON body passes before it is parsed, old (a regex tokeniser, kept in the bench) and new "
        "(router.schema.bodies.json_too_deep), in one process on the same bodies; median of repeats. Target: "
        f"{d['target']}.")),
    ("encode", "deploy.bench_encode", "Encoders: prism's encoder class vs raw sentence-transformers", lambda d: (
        "all-MiniLM-L6-v2, distinct texts per batch, `python -m deploy.bench --only encode`; both sides on the "
        f"same device in the same run. Target: {d['target']}. Rows of a device this machine does not have say "
        '"not run".')),
    ("startup", "deploy.bench_startup", "Start-up: prism up --detach and prism down", lambda d: (
        "What most e2e tests and `make demo` pay: `prism up --detach` (milvus-lite, the bundled Elasticsearch API "
        "server, MiniLM and the tiny CLIP) restarted over a 2-shard collection, then `prism down`; medians of "
        "the cycles, phases from the `started in` line prism up logs. Rows: the code before issue 27's start-up "
        "work and after it, measured in the same session (this machine is shared: compare the ratio).")),
    ("capacity", "deploy.bench_capacity", "Capacity model: the real router over simulated shard replicas", lambda d: (
        f"{d['model']}; service time {d['cost']['per_call_ms']} ms per call + {d['cost']['per_vector_ms']} ms per "
        f"query vector ({d['cost']['from']}). {d['sweep']} (base {d['base']}); saturation from a closed loop, p99 at "
        f"{d['load_for_p99']} x it from Poisson arrivals; {d['router_cpu_note']}.")),
    ("ingest", "deploy.bench_ingest", "Ingestion: Ray Data pipeline vs a plain loop", lambda d: (
        "Text points into a running prism (MiniLM, 2 shards, milvus-lite). Pipeline: `prism ingest` (Ray Data "
        "map_batches with an encoder actor, batched upserts carrying vectors, ledger; it joins the instance's Ray "
        f"cluster: {d.get('joined_instance_ray', False)}). Baseline: one process encoding batches of 256 and posting "
        "them, same run, its encoder loaded before its clock starts. Start-up: from the call to the first "
        "acknowledged write; steady: the points after it over their time (Ray Data embeds ahead of the writes, so on "
        "small loads it overstates).")),
    ("snapshots", "deploy.bench_snapshots", "Snapshots and restore", lambda d: (
        f"{d['points']:,} x {d['dim']} points, {d['shards']} shards, Milvus server + bundled Elasticsearch API, "
        "PrismService in process; snapshot under a steady writer, then restore (deploy/bench_snapshots.py).")),
]


def _routing_lines(rt: dict) -> list[str]:
    """Issue 28: vector routing against hash on the same 8 shards, and key routing."""
    lines = ["## Routing: queries that visit only the shards that can answer", "",
             f"Machine: {_machine_line(rt['machine'])}.", "",
             f"{rt['sets']['clustered']['n']:,} x {rt['dim']} points per set, {rt['shards']} shards on the bundled "
             f"Milvus server ({rt['index']}), {rt['centroids']} centroids, {rt['queries']} queries; recall@10 "
             "against exact search over all points. Hash and every probe measured side by side in alternating "
             "repeats (medians).", "",
             "Shard calls per query count the Milvus searches the shards made (the ingress coalescer and the "
             "replica's group commit merge concurrent queries' searches of one shard into one); router CPU is the bench process's (Milvus is another "
             "process). Each figure is one window of the queries (200: under a second at c=32): two c=32 figures "
             "fell far below their c=8 (hash on the clustered set, probe all on the other) in this run, not "
             "profiled; a stall of the Milvus server inside so short a window is the suspect.", "",
             "| set | routing | probe | shards visited | QPS c=1 | QPS c=8 | QPS c=32 | p50 ms c=1 | recall@10 "
             "| shard calls / query c=8 | router CPU ms / query c=8 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, st in rt["sets"].items():
        rows = [("hash", "-", st["hash"])] + [("vector", p, r) for p, r in st["probes"].items()]
        for routing, probe, r in rows:
            lines.append(f"| {label} | {routing} | {probe} | {r['shards_visited_mean']} | {r.get('qps_c1', '-')} | "
                         f"{r['qps_c8']} | {r.get('qps_c32', '-')} | {r['p50_ms_c1']} | {r['recall_at_10']} | "
                         f"{r.get('shard_calls_per_query_c8', '-')} | {r.get('router_cpu_ms_per_query_c8', '-')} |")
    for label, st in rt["sets"].items():
        lines.append("")
        lines.append(f"- {label}: probe 2 QPS / hash QPS **{st['qps_ratio_probe2']}** (range "
                     f"{st['qps_ratio_probe2_range']}; at c=1 {st.get('qps_ratio_probe2_c1', '-')}, at c=32 "
                     f"{st.get('qps_ratio_probe2_c32', '-')}), recall@10 at probe 2 {st['recall_probe2']}; recall reaches "
                     f"0.95 at probe {st['probe_for_recall_0_95']}; rebalance {st['rebalance_s']} s "
                     f"({st['moved']:,} points moved, shard spread {st['spread']}).")
    k = rt["key"]
    lines += ["", f"Key routing ({k['n']:,} points, {k['tenants']} tenants, a one-tenant `term` filter): key "
              f"{k['key']['qps_c8']} QPS at c=8 ({k['key']['shards_visited_mean']} shard) vs hash "
              f"{k['hash']['qps_c8']} ({k['hash']['shards_visited_mean']} shards): **{k['qps_ratio_key']}x** (range "
              f"{k['qps_ratio_key_range']}).", "",
              f"Targets (issue 28): {rt['targets']}.", ""]
    return lines


def write_report() -> Path:
    lines = ["# prism benchmarks", "",
             "Generated by `make bench` (`python -m deploy.bench`); raw numbers in `docs/bench/*.json`.",
             "Every figure is compared with a baseline measured in the same run on the same machine.", ""]
    core = _load("core")
    if core:
        m = core["machine"]
        lines += ["## Core: sharded fan-out, heap merge, RRF", "",
                  f"Machine: {_machine_line(m)}.", "",
                  "Data: Gaussian mixture (64 clusters), 2 spaces (384-d and 512-d, cosine), HNSW (M=16, "
                  "efConstruction=200, ef=64). Query: 2 prefetches (limit 20 each) fused with RRF, top 10. "
                  "Baseline: the same searches done sequentially from one process against the same "
                  "collections, then merged and fused the same way. Recall@10: fused top-10 against the exact "
                  "fused top-10 (brute-force per space, same RRF).", "",
                  "| backend | points | shards | p50 ms | p99 ms | baseline p50 ms | ratio p50 | recall@10 | QPS c=1 | QPS c=8 | p99 ms c=8 | load points/s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in core["runs"]:
            lines.append(f"| {r['backend']} ({r.get('date', m['date'])}) | {r['n']:,} | {r['shards']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['baseline_p50_ms']} | {r['ratio_p50']} | {r['recall_at_10']} | {r['qps_c1']} | "
                         f"{r['qps_c8']} | {r['p99_ms_c8']} | {r['load_points_per_s']} |")
        plot = _plot_core(core)
        if plot:
            lines += ["", f"![core p50](bench/{plot})"]
        batched = [r for r in core["runs"] if "qps_c8_batched" in r]
        if batched:
            lines += ["", "The same shards behind a coordinator with cross-request batching (the default since the "
                      "fast-path work): QPS at c=8 unbatched -> batched: " + "; ".join(
                          f"{r['backend']} {r['qps_c8']} -> **{r['qps_c8_batched']}** (p50 c=1 {r['p50_ms']} -> "
                          f"{r['p50_ms_c1_batched']} ms)" for r in batched) + "."]
        lines += ["", "Targets from the core issue: ratio p50 <= 0.8, recall@10 >= 0.95.", ""]
    sv = _load("serving")
    if sv:
        lines += ["## Serving: text queries over HTTP, embedding included", "",
                  f"Machine: {_machine_line(sv['machine'])}.", "",
                  f"`prism up` on the bundled Milvus server, one collection of {sv['n']:,} points (384-d, HNSW, "
                  f"{sv['shards']} shards); each request embeds its text with MiniLM (Serve deployment, dynamic "
                  "batching) and searches every shard. Baseline: raw MiniLM batched encode throughput of one "
                  "process in the same run.", "",
                  "| clients | p50 ms | p99 ms | QPS |", "|---|---|---|---|"]
        for c in (1, 8, 32):
            lines.append(f"| {c} | {sv[f'p50_ms_c{c}']} | {sv[f'p99_ms_c{c}']} | {sv[f'qps_c{c}']} |")
        lines += ["", f"Raw encode: {sv['encode_per_s']} texts/s. Ratio best QPS / encode throughput: "
                  f"**{sv['ratio_qps_encode']}**. Errors: {sv['errors']}."]
        if "qps_c32_unbatched" in sv:
            lines += ["", "Cross-request batching on (default) and off, same collection, distinct queries, cache off; "
                      "then a Zipf(1.1) workload over 1,000 distinct queries at c=32 with the result cache on:", "",
                      "| measure | value |", "|---|---|",
                      f"| QPS c=32, batched / unbatched | {sv['qps_c32']} / {sv['qps_c32_unbatched']} "
                      f"(speedup_batching **{sv['speedup_batching']}**) |",
                      f"| p50 ms c=1, batched / unbatched | {sv['p50_ms_c1']} / {sv['p50_ms_c1_unbatched']} |",
                      f"| QPS c=32 cached (Zipf) | {sv['qps_c32_cached']} ({sv['ratio_cached_uncached']}x uncached; "
                      f"hit rate {sv['cache_hit_rate']}) |",
                      f"| ratio_qps_encode | {sv['ratio_qps_encode']} |", "",
                      f"Targets: {sv['targets']}."]
            for key, what in (("cpu_ms_per_request_c32", "batched"), ("cpu_ms_per_request_c32_unbatched", "unbatched")):
                cpu = sv.get(key)
                if cpu:
                    lines += ["", f"CPU per request at c=32, {what}, by process (ms; 2 cores = 2,000 ms/s): "
                              + ", ".join(f"{k} {v}" for k, v in cpu.items()) + f" (total {round(sum(cpu.values()), 1)})."]
        else:
            lines += ["", "Batching on/off and the cached workload: not run in this file's run."]
        plot = _plot_serving(sv)
        if plot:
            lines += ["", f"![serving qps](bench/{plot})"]
        lines.append("")
    fl = _load("filters")
    if fl:
        lines += ["## Filters: latency per plan path", "",
                  f"Machine: {_machine_line(fl['machine'])}.", "",
                  f"{fl['n']:,} points (384-d, HNSW) on the bundled Milvus server, metadata in noida-db (the local "
                  f"Elasticsearch-API server). Filter: `range` on an integer field matching 1/10/50% of points, each "
                  f"plan path forced by config. Baseline: the unfiltered query, p50 {fl['unfiltered_p50_ms']} ms.", "",
                  "| selectivity | plan | p50 ms | p99 ms | mean post-filter rounds | p50 / unfiltered |",
                  "|---|---|---|---|---|---|"]
        for r in fl["runs"]:
            if "error" in r:
                lines.append(f"| {r['selectivity_pct']}% | {r['plan']} | failed: {r['error'][:80]} | | | |")
                continue
            lines.append(f"| {r['selectivity_pct']}% | {r['plan']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['mean_rounds']} | {r['ratio_p50_vs_unfiltered']} |")
        plot = _plot_filters(fl)
        if plot:
            lines += ["", f"![filters p50](bench/{plot})"]
        lines += ["", "noida-db scans documents linearly, so every Elasticsearch round trip (count, id set, "
                  "confirmation) costs time proportional to the collection; a real Elasticsearch answers these from "
                  "inverted indexes and doc values, which shrinks the pre- and post-filter columns, not the pushdown "
                  "one.", ""]
    ch = _load("chaos")
    if ch and "runs" in ch:
        lines += ["## Chaos: one run per fault, under load", "",
                  f"Machine: {_machine_line(ch['machine'])}.", "",
                  "Each run: 80% vector queries (top 10) and 20% upserts of 10 new points at concurrency "
                  f"{ch['runs'][0]['concurrency']} for "
                  + ", ".join(f"{r['seconds']:.0f} s ({r['fault']})" for r in ch["runs"]) + ", the fault injected after "
                  "10 s, the heal loop running as the router's does. `recovery s`: from the fault's end (the last "
                  "replica killed, the server back up) until every replica is live and a query answers complete. "
                  "`writes lost`: acknowledged writes missing on ANY replica at the end (every replica read back). "
                  "`diverged ids`: ids some replica holds differently from another replica of its shard at the end "
                  "(digests after a full rescan: ids and contents; `not compared` when a replica's digest did not "
                  "answer, never 0 unseen). `equal after s`: from the fault's end until "
                  "every shard's replicas first had equal digests, polled once a second while the load goes on (a write "
                  "in flight makes a poll see them differ, so this is an upper bound; -: not within 120 s of the "
                  "load's end). "
                  "Made by `python -m deploy.bench --only chaos` (deploy/bench_chaos.py).", "",
                  "| fault | backend | shards x replicas (quorum) | queries | failed (during fault) | partial | "
                  "p99 before ms | p99 during ms | p99 after ms | fault s | recovery s | writes acked | "
                  "writes refused | writes lost | diverged ids | equal after s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ch["runs"]:
            lines.append(f"| {r['fault']} | {r['backend']} | {r['shards']} x {r['replicas']} ({r['write_quorum']}) | "
                         f"{r['queries']} | {r['failed']} ({r['failed_during_fault']}) | {r['partial']} | "
                         f"{r['p99_ms_before']} | {r['p99_ms_during']} | {r['p99_ms_after']} | {r['fault_s']} | "
                         f"{r['recovery_s']} | {r['writes_acked']} | {r['writes_refused']} | {r['writes_lost']} | "
                         f"{r.get('diverged_ids', 'not measured') if r.get('diverged_ids', 0) is not None else 'not compared (%s replicas)' % r.get('replicas_not_compared')} | "
                         f"{'not measured' if 'diverged_ids' not in r else '-' if r.get('replicas_equal_after_s') is None else r['replicas_equal_after_s']} |")
        lines.append("")
        for r in ch["runs"]:
            extra = [*r.get("notes", [])]
            kinds = r.get("during_fault_by_kind") or {}
            if len(kinds) > 1:
                extra.append("failed during the fault, by query: " + ", ".join(
                    f"{k} {v['failed']} of {v['queries']}" for k, v in sorted(kinds.items())))
            if "placement_before" in r:
                extra.append(f"each shard's replicas on different nodes before the loss: "
                             f"{str(r['placement_before']['replicas_on_distinct_nodes']).lower()} (node ids reported by "
                             f"the actors, checked against Ray's node table); replica counts equal after: "
                             f"{str(r.get('replica_counts_equal')).lower()}")
            if "drift_after" in r:
                extra.append(f"`prism verify` after it returned: drift {str(r['drift_after']).lower()} "
                             f"({r['verify']['shard_points']:,} shard points, "
                             f"{r['verify']['elasticsearch_documents']:,} Elasticsearch documents)")
            if extra:
                lines.append(f"- {r['fault']}: " + "; ".join(extra) + ".")
        if ch.get("not_run"):
            lines.append(f"- Not run: {', '.join(ch['not_run'])}.")
        lines.append("")
    ae = _load("antientropy")
    if ae:
        lines += ["## Anti-entropy: idle cost and write-path cost", "",
                  f"Machine: {_machine_line(ae['machine'])}.", "",
                  f"An idle, equal collection of {ae['points']:,} points ({ae['dim']}-d, one shard, {ae['replicas']} "
                  f"replicas, {ae['backend']}) compared by digest as a sequencer does every "
                  f"{ae['anti_entropy_interval_s']:.0f} s, each replica's digest rebuilt by a full scan every "
                  f"{ae['digest_rescan_s'] / 3600:.0f} h. Made by `python -m deploy.bench --only antientropy` "
                  "(deploy/bench_antientropy.py).", "",
                  "| what | measured |", "|---|---|",
                  f"| digest build, both replicas (full scan; also each rescan) | {ae['digest_build_s_both_replicas']} s "
                  f"wall, {ae['digest_build_cpu_s']} s CPU |",
                  f"| one comparison of the equal replicas (CPU, median of {ae['passes']}; max) | "
                  f"{ae['compare_cpu_ms_median']} ms ({ae['compare_cpu_ms_max']} ms) |",
                  f"| idle cost: comparisons + rescans amortised, % of one core | {ae['idle_cpu_percent_of_one_core']} % |",
                  f"| one-point upsert (wait=true), median, digest kept up to date vs none ({ae['upserts_per_mode']} "
                  f"each, alternating blocks) | {ae['upsert_ms_median_digest_kept']} ms vs "
                  f"{ae['upsert_ms_median_no_digest']} ms |", ""]
        lines += [f"- {n}" for n in ae.get("notes", [])] + [""]
    so = _load("scaleout")
    if so:
        lines += ["## Ingress scale-out", "", f"Machine: {_machine_line(so['machine'])}.", "",
                  f"Vector queries (top 10, {so['dim']}-d, {so['points']:,} points, {so['shards']} shards, "
                  f"{so['backend']}) over HTTP at c={so['concurrency']}, {so['requests_per_round']} requests per round, "
                  f"{so['rounds']} rounds alternating 1 and 2 ingress replicas (`ingress_replicas`); medians. Made by "
                  "`python -m deploy.bench --only scaleout` (deploy/bench_scaleout.py).", "",
                  "| configuration | QPS c=32 | p50 ms c=32 | p50 ms c=1 (client) | took_ms c=1 (server) | of it fan-out "
                  "| QPS per round |", "|---|---|---|---|---|---|---|"]
        if "medians" not in so:  # a run before issue 29 rewrote the bench: no configuration rows
            del lines[-2:]
        for k, m in so.get("medians", {}).items():
            lines.append(f"| {k} | {m['qps']} | {m['p50']} | {m['p50_c1']} | {m['took_c1']} | {m.get('fan_out_c1')} | "
                         f"{so['qps_rounds'][k]} |")
        lines += ["", f"Two ingress replicas / one: **{so['ratio']}** (without group commit at the replica "
                  f"{so.get('ratio_no_group_commit')}, without the ingress coalescer {so.get('ratio_no_ingress_batching')}"
                  f"); two replicas per shard / one, one ingress: **{so.get('replica_ratio')}**; targets "
                  f"{so.get('targets')}; {so['errors']} errors on {so['cores']} cores. Configurations: "
                  f"{so.get('configs')}."] if "medians" in so else [
            f"Before the bench compared group commit and replicas (rerun `--only scaleout`): 1 ingress {so['qps_ingress1']}"
            f" QPS, 2: {so['qps_ingress2']} (ratio {so['ratio']}); p50 at c=1 {so.get('p50_ms_c1_ingress1')} ms."]
        lines += [f"- CPU per request at c=32, {k} (ms; 2 cores = 2,000 ms/s): " + ", ".join(
            f"{p} {v}" for p, v in sorted(per.items(), key=lambda kv: -kv[1])[:8]) + "."
            for k, per in (so.get("cpu_ms_per_request_c32") or {}).items() if per]
        lines.append("")
    sc = _load("scaling")
    if sc:
        lines += ["## Scaling: collection size and shard count", "",
                  f"Machine: {_machine_line(sc['machine'])}.", "",
                  "| points | shards | p50 ms | p99 ms | QPS c=8 |", "|---|---|---|---|---|"]
        for r in sc["runs"]:
            lines.append(f"| {r['n']:,} | {r['shards']} | {r['p50_ms']} | {r['p99_ms']} | {r['qps_c8']} |")
        plot = _plot_scaling(sc)
        if plot:
            lines += ["", f"![scaling](bench/{plot})"]
        lines += ["", f"1 M points takes about an hour to load and index on 2 cores; run it separately: "
                  f"`{sc['one_million']}`.", ""]
    rt = _load("routing")
    if rt:
        lines += _routing_lines(rt)
    for name, module, title, about in SECTIONS:
        data = _load(name)
        if data:
            from importlib import import_module

            lines += [f"## {title}", "", f"Machine: {_machine_line(data['machine'])}. {about(data)}", "",
                      import_module(module).table(data), ""]
    out = DOCS / "benchmarks.md"
    notes = DOCS / "bench" / "notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    out.write_text("\n".join(lines) + "\n")
    return out
