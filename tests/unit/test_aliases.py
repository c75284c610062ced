"""Alias rules (router.collection.aliases), their file in the catalog, and who may change them."""
import pytest

from cluster.collection_spec import CollectionConfig
from cluster.errors import CollectionAliased, CollectionExists, CollectionNotFound, InvalidRequest
from router.collection.aliases import aliases_of, check_alias, check_collection_name, check_deletable, visible
from router.collection.catalog import Catalog
from router.serving.access import route_access


def cfg(name: str) -> CollectionConfig:
    return CollectionConfig(name=name, spaces={"v": {"dim": 2}})


@pytest.mark.parametrize("alias, target, error, field", [
    ("a/../b", "A", InvalidRequest, "alias"), ("x__y", "A", InvalidRequest, "alias"),
    ("prod", "../A", InvalidRequest, "collection"),
    ("A", "B", CollectionExists, "alias"), ("a", "B", CollectionExists, "alias"),  # a collection's name, any case
    ("PROD", "A", CollectionExists, "alias"),  # differs from alias `prod` only in case
    ("next", "prod", InvalidRequest, "collection"),  # no alias of an alias
    ("next", "C", CollectionNotFound, "collection"),
])
def test_an_alias_is_refused_naming_the_field(alias, target, error, field):
    with pytest.raises(error) as exc:
        check_alias(alias, target, ["A", "B"], {"prod": "A"})
    assert exc.value.field == field and type(exc.value) is error


def test_an_alias_may_be_switched_and_a_collection_may_not_take_its_name():
    check_alias("prod", "B", ["A", "B"], {"prod": "A"})  # a switch: no error
    with pytest.raises(CollectionExists, match="'prod'"):
        check_collection_name("Prod", {"prod": "A"})
    check_collection_name("C", {"prod": "A"})
    assert aliases_of("A", {"prod": "A", "x": "A", "y": "B"}) == ["prod", "x"]
    with pytest.raises(CollectionAliased, match="'prod', 'x'"):
        check_deletable("A", {"prod": "A", "x": "A"})
    check_deletable("B", {"prod": "A"})
    assert visible({"prod": "A", "x": "B"}, {"prod"}) == {"prod": "A"}
    assert visible({"prod": "A"}, None) == {"prod": "A"}


def test_aliases_persist_in_the_catalog_and_another_reader_sees_each_switch(tmp_path):
    one, other = Catalog(tmp_path), Catalog(tmp_path)  # two ingress replicas
    one.create(cfg("A"))
    one.create(cfg("B"))
    assert one.set_alias("prod", "A") is None
    assert other.resolve("prod") == "A" and other.resolve("A") == "A" and other.resolve("zz") == "zz"
    for target, before in (("B", "A"), ("A", "B"), ("B", "A")):  # switches in quick succession are all seen
        assert one.set_alias("prod", target) == before
        assert other.resolve("prod") == target
    assert one.names() == ["A", "B"]  # the alias file is no collection
    with pytest.raises(CollectionExists, match="alias 'prod'"):
        other.create(cfg("prod"))
    with pytest.raises(CollectionExists, match="alias 'prod'"):
        other.ensure(cfg("PROD"))
    assert Catalog(tmp_path).aliases() == {"prod": "B"}  # a restart reads them back
    assert other.delete_alias("prod") == "B"
    assert one.aliases() == {} and one.resolve("prod") == "prod"
    with pytest.raises(CollectionNotFound, match="alias 'prod'"):
        one.delete_alias("prod")


def test_alias_routes_need_admin_to_change_and_read_to_list():
    assert route_access("GET", "/v1/aliases") == ("read", None)
    for method in ("PUT", "DELETE", "POST"):
        assert route_access(method, "/v1/aliases/prod")[0] == "admin"
    assert route_access("GET", "/v1/aliases/prod")[0] == "admin"  # no such read route: deny by default
    assert route_access("POST", "/v1/collections/prod/query") == ("read", "prod")  # an alias reads as a collection


def test_a_scoped_key_reaches_only_the_names_its_scope_holds():
    from types import SimpleNamespace

    from cluster.errors import Forbidden
    from router.collection.aliases import check_scope

    check_scope(None, "A", "B")  # auth off
    check_scope(SimpleNamespace(collections=None, key_id="k"), "A", "B")  # an unscoped key
    check_scope(SimpleNamespace(collections=["A", "prod"], key_id="k"), "prod", "A")
    with pytest.raises(Forbidden, match="'B'"):
        check_scope(SimpleNamespace(collections=["A", "prod"], key_id="k"), "prod", "B")
