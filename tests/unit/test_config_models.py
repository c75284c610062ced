import pytest
from pydantic import ValidationError

from cluster.collection_spec import CollectionConfig, IndexConfig, SpaceConfig, check_index_support
from cluster.config import ClusterConfig, MilvusConfig, load_config
from cluster.errors import FilterError, InvalidRequest
from shards.expr import ids_in, literal, quote_string
from router.schema.points import DeleteRequest, Point, UpsertRequest
from router.schema.query import DEFAULT_WINDOW, Fusion, QueryRequest


def space(dim=4, **kw):
    return SpaceConfig(dim=dim, **kw)


def test_valid_collection():
    c = CollectionConfig(name="products", spaces={"text": space(384), "image": space(512, metric="ip")}, shards=4)
    assert c.spaces["text"].index.type == "HNSW"
    assert c.replicas == 1


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"name": "bad-name", "spaces": {"t": {"dim": 4}}}, "'bad-name'"),
        ({"name": "c", "spaces": {}}, "at least one vector space"),
        ({"name": "c", "spaces": {"t": {"dim": 0}}}, "dim"),
        ({"name": "c", "spaces": {"t": {"dim": 4, "metric": "hamming"}}}, "metric"),
        ({"name": "c", "spaces": {"t": {"dim": 4, "index": {"type": "DISKANNX"}}}}, "'DISKANNX'"),
        ({"name": "c", "spaces": {"t": {"dim": 4}}, "shards": 0}, "shards"),
        ({"name": "c", "spaces": {"t": {"dim": 4}}, "metadata": {"price": "money"}}, "'money'"),
        ({"name": "c", "spaces": {"t": {"dim": 4, "source": "desc"}}}, "no encoder"),
        ({"name": "c", "spaces": {"t": {"dim": 4}}, "colour": 1}, "colour"),
    ],
)
def test_bad_collection_values_are_quoted(kwargs, needle):
    with pytest.raises(ValidationError) as exc:
        CollectionConfig(**kwargs)
    assert needle in str(exc.value)


def test_milvus_config_rules():
    with pytest.raises(ValidationError, match="needs a uri"):
        MilvusConfig(mode="server")
    with pytest.raises(ValidationError, match="takes no uri"):
        MilvusConfig(mode="lite", uri="http://x")
    with pytest.raises(ValidationError, match="GPU-capable"):
        MilvusConfig(mode="lite", gpu=True)


def test_index_support_never_falls_back():
    check_index_support(IndexConfig(type="hnsw"), "lite")
    check_index_support(IndexConfig(type="IVF_PQ"), "server")
    with pytest.raises(InvalidRequest, match="milvus-lite"):
        check_index_support(IndexConfig(type="IVF_PQ"), "lite")
    with pytest.raises(InvalidRequest, match="GPU"):
        check_index_support(IndexConfig(type="GPU_CAGRA"), "server")
    check_index_support(IndexConfig(type="GPU_CAGRA"), "server", gpu=True)


def test_load_config_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("port: 9001\nmilvus: {mode: bundled}\n")
    cfg = load_config(p, data_dir=str(tmp_path))
    assert cfg.port == 9001 and cfg.milvus.mode == "bundled" and cfg.data_dir == str(tmp_path)
    p.write_text("port: -1\n")
    with pytest.raises(InvalidRequest, match="port"):
        load_config(p)
    assert isinstance(load_config(None), ClusterConfig)


def q(**kw):
    base = {"prefetch": [{"space": "text", "vector": [0.1, 0.2]}]}
    base.update(kw)
    return QueryRequest.model_validate(base)


def test_query_request_defaults_and_limits():
    r = q()
    assert r.limit == 10 and r.fusion.method == "rrf" and r.fusion.k == 60
    assert r.prefetch_limit(r.prefetch[0]) == 10
    assert q(offset=5).prefetch_limit(r.prefetch[0]) == 15


def test_fused_queries_page_over_a_window_that_does_not_depend_on_the_page():
    two = [{"space": "a", "vector": [0.1]}, {"space": "b", "vector": [0.2]}]
    pages = [q(prefetch=two, limit=lim, offset=off) for lim, off in ((10, 0), (10, 10), (25, 25), (50, 0))]
    # Every page of a fused query inside the default window asks each space for the same candidates.
    assert {r.window() for r in pages} == {DEFAULT_WINDOW}
    assert {r.prefetch_limit(r.prefetch[0]) for r in pages} == {DEFAULT_WINDOW}
    assert all(r.window_note() is None for r in pages)
    staged = [q(prefetch=two[:1], limit=5, offset=o, stages=[{"mmr": {"space": "a"}}]) for o in (0, 5, 45)]
    assert {r.candidates() for r in staged} == {DEFAULT_WINDOW}  # stages see the same pool on every page
    # Past the default window it widens, and says so; a window given explicitly is kept, or a 422.
    deep = q(prefetch=two, limit=10, offset=DEFAULT_WINDOW)
    assert deep.window() == DEFAULT_WINDOW + 10 and "fusion.window" in deep.window_note()
    fixed = q(prefetch=two, limit=10, offset=190, fusion={"window": 200})
    assert fixed.window() == 200 and fixed.prefetch_limit(fixed.prefetch[1]) == 200 and fixed.window_note() is None
    with pytest.raises(ValidationError, match="set fusion.window to at least 210"):
        q(prefetch=two, limit=10, offset=200, fusion={"window": 200})
    # An explicit prefetch limit is that prefetch's window; one space alone pages over its own ranking.
    mixed = q(prefetch=[{**two[0], "limit": 7}, two[1]])
    assert [mixed.prefetch_limit(p) for p in mixed.prefetch] == [7, DEFAULT_WINDOW]
    assert q(offset=30).window() == 40 and q(offset=30).window_note() is None


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": 9_000, "offset": 2_000}, "limit + offset"),
        ({"prefetch": []}, "prefetch"),
        ({"prefetch": [{"space": "t"}]}, "exactly one of vector, text, image"),
        ({"prefetch": [{"space": "t", "vector": [1.0], "text": "x"}]}, "exactly one"),
        ({"prefetch": [{"space": "t", "vector": []}]}, "must not be empty"),
        ({"fusion": {"method": "borda"}}, "method"),
        ({"fusion": {"weights": [1.0, 2.0]}}, "1 prefetches"),
        ({"fusion": {"weights": [0.0]}}, "at least one weight"),
        ({"unknown": 1}, "unknown"),
        (
            {"prefetch": [{"space": "a", "vector": [1.0]}, {"space": "b", "vector": [1.0]}], "fusion": {"method": "none"}},
            "exactly one prefetch",
        ),
    ],
)
def test_query_request_rejects(kw, needle):
    with pytest.raises(ValidationError) as exc:
        q(**kw)
    assert needle in str(exc.value)


def test_points_and_delete_requests():
    assert Point(id=7).id == "7"
    with pytest.raises(ValidationError):
        Point(id="")
    with pytest.raises(ValidationError):
        Point(id=True)
    with pytest.raises(ValidationError, match="appears twice"):
        UpsertRequest(points=[{"id": "a"}, {"id": "a"}])
    with pytest.raises(ValidationError, match="exactly one of ids or filter"):
        DeleteRequest()
    assert DeleteRequest(ids=["a"]).ids == ["a"]
    assert Fusion(weights=[0.0, 1.0]).weights == [0.0, 1.0]


def test_expression_literals_are_escaped_not_spliced():
    assert quote_string('a"b') == '"a\\"b"'
    assert quote_string("back\\slash") == '"back\\\\slash"'
    assert quote_string("line\nbreak") == '"line\\nbreak"'
    assert quote_string('" or true or "') == '"\\" or true or \\""'
    assert quote_string("caf\u00e9") == '"caf\u00e9"'
    with pytest.raises(FilterError, match="control character"):
        quote_string("nul\x00")
    assert literal(True) == "true" and literal(3) == "3" and literal(2.5) == "2.5"
    with pytest.raises(FilterError):
        literal(float("nan"))
    with pytest.raises(FilterError):
        literal({"a": 1})
    assert ids_in(["a", 'b"']) == 'id in ["a", "b\\""]'


def test_env_overrides_reach_only_their_keys(tmp_path):
    from cluster.config import apply_env

    raw = {"milvus": {"mode": "server", "uri": "http://old:19530"}, "port": 8000}
    out = apply_env(raw, {"PRISM_MILVUS_URI": "http://milvus:19530", "PRISM_ES_API_KEY": "k", "PRISM_ES_URL": ""})
    assert out["milvus"] == {"mode": "server", "uri": "http://milvus:19530"}
    assert out["elasticsearch"] == {"api_key": "k"} and out["port"] == 8000
    assert raw["milvus"]["uri"] == "http://old:19530"  # input untouched
    p = tmp_path / "c.yaml"
    p.write_text("milvus: {mode: server, uri: http://file:19530}\nelasticsearch: {mode: external, url: http://es:9200}\n")
    import os

    os.environ["PRISM_MILVUS_TOKEN"] = "secret-token"
    try:
        cfg = load_config(p, env=True)
    finally:
        del os.environ["PRISM_MILVUS_TOKEN"]
    assert cfg.milvus.uri == "http://file:19530" and cfg.milvus.token == "secret-token"
    assert cfg.elasticsearch.url == "http://es:9200"


def test_gpu_placement_options():
    from cluster.actor_options import encoder_actor_options, shard_actor_options
    from cluster.config import PlacementConfig

    cpu = PlacementConfig()
    assert shard_actor_options(cpu) == {"num_cpus": 0}
    assert encoder_actor_options(cpu) == {"num_cpus": 0}
    gpu = PlacementConfig(encoder_num_gpus=1)
    assert "num_gpus" not in shard_actor_options(gpu) and encoder_actor_options(gpu)["num_gpus"] == 1
    # Shard actors are Milvus clients: a GPU reserved for them would sit idle, so the setting is refused.
    with pytest.raises(ValidationError, match="shard actors are Milvus clients"):
        PlacementConfig(shard_num_gpus=0.5)
    with pytest.raises(ValidationError):
        PlacementConfig(encoder_num_gpus=-1)


def test_chunk_windows_cover_everything_with_overlap():
    from router.encoding.embed import chunk_ids

    assert chunk_ids(list(range(10)), 20) == [list(range(10))]
    chunks = chunk_ids(list(range(100)), 40)
    assert chunks[0] == list(range(40)) and chunks[-1][-1] == 99
    assert all(len(c) <= 40 for c in chunks)
    assert all(a[-10:] == b[:10] for a, b in zip(chunks, chunks[1:]))  # a quarter of the window overlaps
    assert sorted(set(i for c in chunks for i in c)) == list(range(100))


def test_the_readme_configuration_block_is_a_valid_config():
    """The README documents every config key in one YAML block: it must load, and say what the defaults are."""
    import re
    from pathlib import Path

    import yaml

    from cluster.config import ClusterConfig

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"## Configuration\n.*?```yaml\n(.*?)```", text, flags=re.S).group(1)
    cfg = ClusterConfig.model_validate(yaml.safe_load(block))
    assert cfg == ClusterConfig()  # the block shows the defaults, key by key


@pytest.mark.parametrize("body", [{"lexical": [None, None], "spaces": {}},       # schemathesis found this: a 500
                                  {"lexical": {"k": None}, "spaces": {"v": {"dim": 2}}},
                                  {"spaces": {"k": {"kind": 5}}}])
def test_malformed_lexical_spaces_are_invalid_requests(body):
    from cluster.collection_spec import CollectionConfig
    from cluster.config import parse_model
    from cluster.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        parse_model(CollectionConfig, {**body, "name": "c"}, "collection")


def test_replicas_of_a_shard_are_placed_on_different_nodes():
    from cluster.actor_options import replica_node

    nodes = ["n-a", "n-b"]
    for shard in range(4):
        assert {replica_node(shard, r, nodes) for r in range(2)} == set(nodes)
    assert [replica_node(s, 0, nodes) for s in range(4)] == ["n-a", "n-b", "n-a", "n-b"]  # first replicas rotate
    three = ["a", "b", "c"]
    assert len({replica_node(1, r, three) for r in range(3)}) == 3
    assert replica_node(0, 1, ["only"]) is None and replica_node(0, 0, []) is None


def test_ray_address_is_a_host_and_port():
    from cluster.config import load_config

    assert load_config(ray_address="10.0.0.5:6379").ray_address == "10.0.0.5:6379"
    assert load_config().ray_address is None
    with pytest.raises(Exception, match="ray_address"):
        load_config(ray_address="ray://head:10001; rm -rf /")
