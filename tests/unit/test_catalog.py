"""The shared catalog file: versions, read-modify-write under its lock, the pause, files from before versions."""
import json
import multiprocessing

import pytest

from cluster.config import CollectionConfig
from cluster.errors import CollectionNotFound
from router.catalog import Catalog


def cfg(**kw) -> CollectionConfig:
    return CollectionConfig(name="c", spaces={"v": {"dim": 2}}, **kw)


def add_field(directory: str, field: str) -> None:
    Catalog(directory).update("c", lambda e: e.with_(config=e.config.model_copy(
        update={"metadata": {**e.config.metadata, field: "keyword"}})))


def test_every_change_is_applied_to_the_current_file_one_version_on(tmp_path):
    a, b = Catalog(tmp_path), Catalog(tmp_path)  # two ingress replicas
    assert a.create(cfg()).version == 1
    a.update("c", lambda e: e.with_(config=e.config.model_copy(update={"metadata": {"x": "keyword"}})))
    # b never read the file: its change still lands on top of a's
    b.update("c", lambda e: e.with_(config=e.config.model_copy(update={"metadata": {**e.config.metadata,
                                                                                      "y": "float"}})))
    entry = a.read("c")
    assert entry.version == 3 and entry.config.metadata == {"x": "keyword", "y": "float"} and entry.paused is None
    paused = b.update("c", lambda e: e.with_(paused="resharding to 3 shards"))
    assert a.read("c").paused == "resharding to 3 shards" and paused.version == 4
    with pytest.raises(CollectionNotFound):
        a.update("gone", lambda e: e)


def test_concurrent_writers_in_other_processes_lose_nothing(tmp_path):
    Catalog(tmp_path).create(cfg())
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=add_field, args=(str(tmp_path), f"f{i}")) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    entry = Catalog(tmp_path).read("c")
    assert set(entry.config.metadata) == {f"f{i}" for i in range(8)} and entry.version == 9


def test_a_file_written_before_versions_reads_as_version_zero_and_a_change_stamps_it(tmp_path):
    (tmp_path / "c.json").write_text(cfg().model_dump_json())
    cat = Catalog(tmp_path)
    assert cat.read("c").version == 0 and cat.names() == ["c"]
    before = cat.stamp("c")
    cat.update("c", lambda e: e)
    assert json.loads((tmp_path / "c.json").read_text())["_catalog"] == {"version": 1, "paused": None}
    assert cat.stamp("c") != before
    cat.delete("c")
    assert cat.read("c") is None and cat.stamp("c") is None and cat.names() == []
