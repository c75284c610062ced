"""The bundled Milvus 2.3 (what `prism up --milvus bundled` starts) binds every interface and has no option to
bind one, so it is started with authentication: an unauthenticated client, or one with Milvus's well-known default
root password, is refused; prism's shards work with the generated password, which survives a restart."""
from __future__ import annotations

import stat

import pytest

from cluster.collection_spec import CollectionConfig
from cluster.config import MilvusConfig
from cluster.services import MILVUS_PASSWORD_FILE
from tests.milvus_start import start_milvus_server
from router.collection.coordinator import Coordinator
from router.schema.points import Point
from shards.local import local_shards, replica_specs, stop_local_shards


def refused(uri: str, token: str) -> bool:
    import grpc
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    try:
        client = MilvusClient(uri=uri, token=token, timeout=10)
        client.list_collections()
    except (MilvusException, grpc.RpcError):
        return True
    client.close()
    return False


@pytest.mark.slow
def test_the_bundled_milvus_requires_the_generated_root_password(tmp_path):
    import asyncio

    data = tmp_path / "milvus-server"
    handle = start_milvus_server(data, auth=True)
    try:
        password_file = data / MILVUS_PASSWORD_FILE
        password = password_file.read_text().strip()
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600 and len(password) >= 24
        assert handle.token == f"root:{password}"
        assert refused(handle.uri, "") and refused(handle.uri, "root:Milvus") and refused(handle.uri, "root:wrong")
        cfg = CollectionConfig(name="authed", shards=1, spaces={"v": {"dim": 2, "index": {"type": "FLAT"}}})
        milvus = MilvusConfig(mode="server", uri=handle.uri, token=handle.token)
        clients = local_shards(cfg, replica_specs(cfg, milvus, tmp_path, None))
        coord = Coordinator.from_clients(cfg, clients)
        assert asyncio.run(coord.upsert([Point(id="a", vectors={"v": [1.0, 0.0]})])).upserted == 1
        stop_local_shards(clients)
    finally:
        handle.stop()
    again = start_milvus_server(data, auth=True)  # a restart: the kept password still opens it
    try:
        assert again.token == handle.token and refused(again.uri, "root:Milvus")
        assert not refused(again.uri, again.token)
    finally:
        again.stop()
