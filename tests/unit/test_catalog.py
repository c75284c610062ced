"""The shared catalog file: versions, read-modify-write under its lock, the pause, files from before versions."""
import json
import multiprocessing

import pytest

from cluster.collection_spec import CollectionConfig
from cluster.errors import CollectionNotFound
from router.collection.catalog import Catalog


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


# ---- issue 33's rules on the shared catalog: paths only from valid names, create never takes a file over ----

@pytest.mark.parametrize("name", ["../c", "/etc/passwd", "c/../c", "..", "", "c\x00", "a__b", "c.json", "C d"])
def test_no_path_is_built_from_a_name_that_breaks_the_rule(tmp_path, name):
    from cluster.errors import InvalidRequest

    cat = Catalog(tmp_path / "catalog")
    (tmp_path / "c.json").write_text(cfg().model_dump_json())  # outside the catalog: must stay unreachable
    for call in (cat.path, cat.stamp, cat.read, cat.delete, lambda n: cat.update(n, lambda e: e)):
        with pytest.raises(InvalidRequest):
            call(name)
    assert (tmp_path / "c.json").exists()


def test_files_that_are_not_prisms_are_ignored(tmp_path):
    cat = Catalog(tmp_path)
    (tmp_path / "not a name.json").write_text(cfg().model_dump_json())
    (tmp_path / "other.json").write_text(cfg().model_dump_json())  # holds collection "c", not "other"
    assert cat.names() == ["other"] and cat.read("other") is None
    with pytest.raises(CollectionNotFound):
        cat.update("other", lambda e: e)
    assert json.loads((tmp_path / "other.json").read_text())["name"] == "c"  # left as it was


def test_create_never_takes_over_a_file_that_is_there(tmp_path):
    from cluster.errors import CollectionExists

    a, b = Catalog(tmp_path), Catalog(tmp_path)
    a.create(cfg())
    a.update("c", lambda e: e.with_(paused="resharding to 3 shards"))
    with pytest.raises(CollectionExists):  # another ingress made it since this one looked
        b.create(cfg(shards=4))
    entry = a.read("c")
    assert entry.version == 2 and entry.paused and entry.config.shards == 1
    with pytest.raises(CollectionExists, match="differ only in case"):
        b.create(CollectionConfig(name="C", spaces={"v": {"dim": 2}}))
    (tmp_path / "x.json").write_text(cfg().model_dump_json())  # not prism's (it holds "c"): not overwritten
    with pytest.raises(CollectionExists):
        b.create(CollectionConfig(name="x", spaces={"v": {"dim": 2}}))
    assert json.loads((tmp_path / "x.json").read_text())["name"] == "c"


def test_a_declared_collection_keeps_what_is_recorded(tmp_path):
    cat = Catalog(tmp_path)
    assert cat.ensure(cfg()).version == 1
    cat.update("c", lambda e: e.with_(config=e.config.model_copy(update={"metadata": {"x": "keyword"}})))
    again = cat.ensure(cfg())  # another ingress starting with the same config
    assert again.version == 2 and again.config.metadata == {"x": "keyword"}
