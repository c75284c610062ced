"""What the bundled Milvus 2.3 server keeps after SIGKILL of its client, the process that wrote (docs/operations.md,
"Replica agreement").

    python deploy/measure_sigkill_server.py parent WORKDIR     (from the repository root)

Starts the server in WORKDIR; a child writes 500 one-point upserts and 2 deletes, says READY and is SIGKILLed; a
new client counts at Strong. Measured 2026-12-04: 498 of 498 kept, deletes kept, 3.7 ms per upsert.
"""
import json, os, signal, subprocess, sys, time
if sys.argv[1] == "child":
    from pymilvus import MilvusClient, DataType
    uri, n = sys.argv[2], int(sys.argv[3])
    c = MilvusClient(uri=uri)
    if c.has_collection("t"):
        c.drop_collection("t")
    s = MilvusClient.create_schema(auto_id=False)
    s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    s.add_field("vec", DataType.FLOAT_VECTOR, dim=8)
    s.add_field("payload", DataType.JSON)
    ip = c.prepare_index_params(); ip.add_index(field_name="vec", index_type="FLAT", metric_type="COSINE")
    c.create_collection("t", schema=s, index_params=ip)
    t0 = time.perf_counter()
    for i in range(n):
        c.upsert("t", [{"id": f"p{i:05d}", "vec": [0.1 * (i % 7) + 0.01] * 8, "payload": {"i": i}}])
    c.delete("t", filter='id in ["p00000", "p00001"]')
    print("READY", round((time.perf_counter() - t0) / n * 1000, 2), flush=True)
    time.sleep(600)
else:
    sys.path.insert(0, os.getcwd())
    from cluster.services import start_milvus_server
    h = start_milvus_server(sys.argv[2])
    try:
        n = 500
        p = subprocess.Popen([sys.executable, __file__, "child", h.uri, str(n)], stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        assert line.startswith("READY"), line
        os.kill(p.pid, signal.SIGKILL); p.wait()
        from pymilvus import MilvusClient
        c = MilvusClient(uri=h.uri)
        rows = c.query("t", filter='id != ""', output_fields=["id"], limit=16000, consistency_level="Strong")
        ids = {r["id"] for r in rows}
        print(json.dumps({"written": n, "deleted": 2, "kept": len(ids), "deletes_kept": "p00000" not in ids,
                          "ms_per_upsert": float(line.split()[1])}))
    finally:
        h.stop()
