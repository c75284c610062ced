"""The large-load path of `prism ingest`: embedding on Ray Data, one encoder actor pool per encoder.

JSONL points -> Ray Data `map_batches` with an actor pool per encoder (the model loads once per actor) -> batches of
points that carry their vectors, so the server does not embed again. A point that cannot be embedded (a broken
image) comes back with its reason; the rest go on. Writing, the ledger and the report are `cluster.cli.ingest`'s.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

INGEST_NAMESPACE = "prism-ingest"  # a job of its own on the instance's cluster: none of prism's named actors
# Where the pipeline ran (IngestReport.ray): joining the instance's cluster saves starting one (~7-11 s of a
# 3,000-point load's ~40 s on a loaded 2-core machine).
RAY_JOINED, RAY_STARTED, RAY_OWN = "the instance's Ray cluster", "a Ray cluster of its own", "this process's Ray"


class EmbedActor:
    """Ray Data callable class: one encoder per actor, embeds the spaces that use it (by `source_jobs`, the
    server's own rule for which payload field feeds which space)."""

    def __init__(self, encoder: str, spaces: dict[str, dict], models_dir: str | None = None):
        from cluster.collection_spec import SpaceConfig
        from router.encoding.embed import load_encoder

        self.encoder = load_encoder(encoder, models_dir)
        self.spaces = {name: SpaceConfig.model_validate(s) for name, s in spaces.items()}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from router.encoding.images import decode_image, is_inline, load_reference, local_path
        from router.encoding.vectors import source_jobs

        points = [json.loads(s) for s in batch["point"]]
        errors = list(batch["error"])
        texts: dict[str, list[tuple[int, str]]] = {}
        images: dict[str, list[tuple[int, str]]] = {}
        for i, p in enumerate(points):
            if not errors[i]:
                for space, value in source_jobs(p["payload"], p["vectors"], self.spaces)[0]:
                    kind = images if self.spaces[space].modality == "image" else texts
                    kind.setdefault(space, []).append((i, value))
        for space, items in images.items():
            src = self.spaces[space].source
            ok = []
            for i, ref in items:
                field = f"{points[i]['id']}.{src}"
                try:
                    ok.append((i, decode_image(load_reference(ref, field, allow_files=True), field)))
                except Exception as exc:  # noqa: BLE001 - this point fails, the others go on
                    errors[i] = getattr(exc, "message", str(exc))
            vecs = self.encoder.encode_images([img for _, img in ok]) if ok else []
            for (i, _), e in zip(ok, vecs):
                points[i]["vectors"][space] = e.vector.tolist()  # JSON edge: float32 until here
                ref = points[i]["payload"][src]
                if is_inline(ref) and local_path(ref) is None:
                    points[i]["payload"][src] = f"<inline image, {len(ref)} base64 characters>"
        for space, items in texts.items():
            for (i, _), e in zip(items, self.encoder.encode_documents([t for _, t in items])):
                points[i]["vectors"][space] = e.vector.tolist()  # JSON edge: float32 until here
        return {"point": [json.dumps(p) for p in points], "error": errors}


def connect(ray_address: str | None) -> str:
    """Ray for the pipeline, and where it runs: this process's Ray when it has one, else the running instance's
    cluster on this host (`ray_address`, joined as a job of its own: its own namespace, its actors end with this
    process), else a cluster started for the command."""
    import ray

    if ray.is_initialized():
        return RAY_OWN
    if not ray_address:
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
        return RAY_STARTED
    # prism's cluster always runs with token auth (`prism up` refuses otherwise), and Ray turns it on by itself
    # only for a cluster it finds, not one it is given: on, and Ray's cached config told so.
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")
    _node_messages_to_stderr()
    ray.init(address=ray_address, namespace=INGEST_NAMESPACE, logging_level="ERROR", log_to_driver=False,
             _node_ip_address="127.0.0.1")
    return RAY_JOINED


def _node_messages_to_stderr() -> None:
    """A job on a shared cluster hears the warnings Ray sends every job of the node (with the instance's actors:
    "8 PYTHON worker processes have been started ...", measured), and Ray prints them on stdout, where the command's
    progress bar and report go: they go to stderr instead (`prism ingest`'s log file, or the console with
    --verbose). Ray's own name for that printer; where a Ray release lacks it, nothing changes."""
    import ray._private.worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "prism_to_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr.prism_to_stderr = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def embedded_batches(todo: list[dict], spaces: dict[str, dict], *, batch_size: int, write_batch: int,
                     concurrency: int, models_dir: str | None) -> Iterator[list[tuple[dict, str]]]:
    """`todo` embedded on Ray Data (Ray `connect`ed first), in batches of `write_batch` (point, error) pairs ('' when
    it was embedded)."""
    import ray

    # The command's own progress bar speaks to people; Ray Data's executor logs do not (what still reaches the
    # console, its INFO lines and core_worker's, `prism ingest` sends to a log file unless --verbose).
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items([{"point": json.dumps(p), "error": ""} for p in todo])
    by_encoder: dict[str, dict[str, dict]] = {}
    for name, s in spaces.items():
        by_encoder.setdefault(s["encoder"], {})[name] = s
    for encoder, enc_spaces in by_encoder.items():
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"encoder": encoder, "spaces": enc_spaces,
                                                               "models_dir": models_dir},
                            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=0)
    for batch in ds.iter_batches(batch_size=write_batch, batch_format="default"):
        yield [(json.loads(s), err) for s, err in zip(batch["point"], batch["error"])]
