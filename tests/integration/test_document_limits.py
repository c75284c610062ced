"""Long source texts are chunked and averaged by the real MiniLM encoder; how much text one document and one
request may bring is bounded (each a 422 naming the field and the limit) before any encoder work or write."""
from __future__ import annotations

import asyncio

import pytest

from cluster.config import ClusterConfig
from cluster.errors import InvalidRequest
from router.encoding.embed import load_encoder
from router.collection.service import PrismService


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm", device="cpu")


@pytest.fixture
def service(tmp_path, minilm):
    windows: list[int] = []

    async def encode(name, texts, document=False):
        out = minilm.encode_documents(texts) if document else minilm.encode(texts)
        windows.append(len(texts))
        return [tuple(e) for e in out]

    svc = PrismService(ClusterConfig(data_dir=str(tmp_path), elasticsearch={"mode": "off"},
                                     limits={"max_document_chars": 2000, "max_request_document_chars": 5000}),
                       encode=encode)
    asyncio.run(svc.create_collection("docs", {"spaces": {"text": {
        "dim": 384, "encoder": "minilm", "source": "body", "index": {"type": "FLAT"}}}}))
    svc.encoded = windows
    yield svc
    svc.close()


def words(n: int, seed: int = 0) -> str:
    vocab = ["search", "vector", "shard", "replica", "query", "filter", "index", "merge", "fusion", "journal"]
    return " ".join(vocab[(i * 7 + seed) % len(vocab)] for i in range(n))[:n]


def count(svc) -> int:
    return asyncio.run(svc.info("docs")).counts["text"]


def test_a_document_over_the_limit_is_refused_before_the_encoder_sees_it(service):
    with pytest.raises(InvalidRequest) as exc:
        asyncio.run(service.upsert("docs", {"points": [{"id": "ok", "payload": {"body": words(100)}},
                                                       {"id": "long", "payload": {"body": words(3000)}}]}))
    assert exc.value.status == 422 and exc.value.field == "points[1].payload.body"
    assert "3000" in exc.value.message and "limits.max_document_chars" in exc.value.message
    with pytest.raises(InvalidRequest) as exc:  # each one fits, together they do not
        asyncio.run(service.upsert("docs", {"points": [{"id": f"p{i}", "payload": {"body": words(1900, i)}}
                                                       for i in range(3)]}))
    assert exc.value.field == "points" and "limits.max_request_document_chars" in exc.value.message
    assert service.encoded == [] and count(service) == 0  # no encoder work, nothing written
    # A partial update that brings a new source text is bounded the same way.
    asyncio.run(service.upsert("docs", {"points": [{"id": "a", "payload": {"body": words(1900)}}]}))
    with pytest.raises(InvalidRequest) as exc:
        asyncio.run(service.update_vectors("docs", {"points": [{"id": "a", "sources": {"body": words(2500)}}]}))
    assert exc.value.field == "points[0].sources.body" and "limits.max_document_chars" in exc.value.message
    assert count(service) == 1


def test_a_long_document_within_the_limit_is_chunked_and_averaged(service, minilm):
    text = words(1900)
    assert len(minilm._tok()(text, add_special_tokens=False)["input_ids"]) > minilm.max_tokens  # several windows
    asyncio.run(service.upsert("docs", {"points": [{"id": "d", "payload": {"body": text}}]}))
    got = asyncio.run(service.retrieve("docs", {"ids": ["d"], "with_vectors": ["text"]})).points[0].vectors["text"]
    want = minilm.encode_documents([text])[0].vector
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
