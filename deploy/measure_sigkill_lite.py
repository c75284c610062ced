"""What milvus-lite keeps after SIGKILL of the process that wrote (docs/operations.md, "Replica agreement").

    python deploy/measure_sigkill_lite.py parent DIR/milvus.db FLUSH_EVERY N   (FLUSH_EVERY 0: never flush)

A child process writes N one-point upserts (flushing every FLUSH_EVERY) and 2 deletes, says READY and is
SIGKILLed; the parent reopens the directory and counts. Measured 2026-12-04: 498 of 498 kept, deletes kept,
with FLUSH_EVERY 0 and 100 (N=500).
"""
import os, sys, signal, subprocess, time, json
mode = sys.argv[1]
path = sys.argv[2]
if mode == "child":
    from pymilvus import MilvusClient, DataType
    flush_every = int(sys.argv[3]); n = int(sys.argv[4])
    c = MilvusClient(uri=path)
    if not c.has_collection("t"):
        s = MilvusClient.create_schema(auto_id=False)
        s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        s.add_field("vec", DataType.FLOAT_VECTOR, dim=8)
        s.add_field("payload", DataType.JSON)
        ip = c.prepare_index_params(); ip.add_index(field_name="vec", index_type="FLAT", metric_type="COSINE")
        c.create_collection("t", schema=s, index_params=ip)
    for i in range(n):
        c.upsert("t", [{"id": f"p{i:05d}", "vec": [0.1*(i%7)+0.01]*8, "payload": {"i": i}}])
        if flush_every and (i + 1) % flush_every == 0:
            c.flush("t")
    # also delete some
    c.delete("t", filter='id in ["p00000", "p00001"]')
    print("READY", flush=True)
    time.sleep(600)
else:
    flush_every, n = sys.argv[3], sys.argv[4]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    p = subprocess.Popen([sys.executable, __file__, "child", path, flush_every, n], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("READY"), line
    os.kill(p.pid, signal.SIGKILL); p.wait()
    from pymilvus import MilvusClient
    c = MilvusClient(uri=path)
    c.load_collection("t")
    rows = c.query("t", filter='id != ""', output_fields=["id"], limit=16000)
    ids = {r["id"] for r in rows}
    print(json.dumps({"flush_every": int(flush_every), "written": int(n), "kept": len(ids), "deleted_kept_deleted": "p00000" not in ids}))
    print(sorted(os.listdir(path)) if os.path.isdir(path) else "nodir")
