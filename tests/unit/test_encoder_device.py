"""Encoder device, dtype and batch settings: pure selection rules, and the real model on this machine's device
(its CPU, or its GPU where torch sees one: the same tests pass on both)."""
import os
import subprocess
import sys

import pytest

from cluster.config import ClusterConfig
from cluster.errors import ConfigError
from router.encoding.embed import BATCH_BY_DEVICE, batch_settings, choose_device, choose_dtype, cuda_visible

NO_CUDA = (False, "torch sees no CUDA device")
CUDA = (True, "")


def test_auto_uses_cuda_only_when_given_a_gpu_and_torch_sees_one():
    assert choose_device("auto", "minilm", assigned_gpus=["0"], cuda=CUDA) == "cuda"
    assert choose_device("auto", "minilm", assigned_gpus=[], cuda=CUDA) == "cpu"  # Ray gave this replica none
    assert choose_device("auto", "minilm", assigned_gpus=["0"], cuda=NO_CUDA) == "cpu"
    assert choose_device("auto", "minilm", assigned_gpus=None, cuda=CUDA) == "cuda"  # outside Ray: visible is enough
    assert choose_device("cpu", "minilm", assigned_gpus=["0"], cuda=CUDA) == "cpu"


def test_cuda_without_a_gpu_is_a_startup_error_naming_the_encoder_and_why():
    with pytest.raises(ConfigError, match="encoder 'clip': encoder_device is 'cuda' but torch sees no CUDA device"):
        choose_device("cuda", "clip", assigned_gpus=None, cuda=NO_CUDA)
    with pytest.raises(ConfigError, match="must be one of"):
        choose_device("tpu", "minilm", assigned_gpus=None, cuda=CUDA)


def test_dtype_follows_the_device():
    assert choose_dtype("auto", "cuda", "m") == "float16" and choose_dtype("auto", "cpu", "m") == "float32"
    assert choose_dtype("float32", "cuda", "m") == "float32"
    with pytest.raises(ConfigError, match="float16' needs a CUDA device"):
        choose_dtype("float16", "cpu", "m")


def test_batch_settings_follow_the_device_unless_set():
    assert batch_settings("cpu") == BATCH_BY_DEVICE["cpu"] == (32, 0.004)
    assert batch_settings("cuda") == BATCH_BY_DEVICE["cuda"] and batch_settings("cuda")[0] > batch_settings("cpu")[0]
    assert batch_settings("cuda", 64, 1.5) == (64, 0.0015)
    assert batch_settings("cpu", None, 0) == (32, 0.0)


def test_config_keys_and_their_bad_values():
    cfg = ClusterConfig()
    assert (cfg.encoder_device, cfg.encoder_dtype, cfg.encoder_batch_size, cfg.encoder_batch_wait_ms) == \
        ("auto", "auto", None, None)
    with pytest.raises(Exception, match="encoder_device"):
        ClusterConfig(encoder_device="gpu")


def test_the_real_model_runs_where_auto_puts_it_on_this_machine():
    """auto outside Ray: cuda in fp16 when torch sees a GPU here, else cpu in fp32; cpu can always be asked for."""
    from router.encoding.embed import load_encoder

    cuda, _ = cuda_visible()
    enc = load_encoder("minilm")
    want = ("cuda", "float16", BATCH_BY_DEVICE["cuda"][0]) if cuda else ("cpu", "float32", BATCH_BY_DEVICE["cpu"][0])
    assert (enc.device, enc.dtype, enc.batch_size) == want
    cpu = load_encoder("minilm", device="cpu")
    assert (cpu.device, cpu.dtype, cpu.batch_size) == ("cpu", "float32", 32)


def test_cuda_asked_for_where_torch_sees_none_is_refused_at_load():
    """Run where torch sees no GPU: this machine when it has none, else a child process with every GPU hidden."""
    code = ("from cluster.errors import ConfigError\nfrom router.encoding.embed import load_encoder\n"
            "try:\n    load_encoder('minilm', device='cuda')\nexcept ConfigError as exc:\n    print('refused:', exc.message)\n")
    if not cuda_visible()[0]:
        from router.encoding.embed import load_encoder

        with pytest.raises(ConfigError, match="encoder 'minilm': encoder_device is 'cuda' but"):
            load_encoder("minilm", device="cuda")
        return
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert "refused: encoder 'minilm': encoder_device is 'cuda' but" in r.stdout, r.stdout + r.stderr[-2000:]


@pytest.mark.skipif(not cuda_visible()[0], reason="no CUDA device here: " + cuda_visible()[1])
def test_cuda_fp16_embeddings_equal_cpu_fp32():
    import numpy as np

    from router.encoding.embed import load_encoder

    texts = ["waterproof hiking boots", "a stoneware coffee mug", "x" * 3000, "warm jacket for a cold hike"]
    gpu, cpu = load_encoder("minilm", device="cuda"), load_encoder("minilm", device="cpu")
    assert (gpu.device, gpu.dtype) == ("cuda", "float16")
    for a, b in zip(gpu.encode(texts), cpu.encode(texts)):
        assert 1 - float(np.dot(a.vector, b.vector)) <= 1e-2
