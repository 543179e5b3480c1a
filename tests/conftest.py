"""Shared test fixtures.

The real data files (Alpaca, ShareGPT, GSM8K) live outside the repository, in the
``shared/data`` folder beside the checkout, or wherever ``$THRESHER_SHARED_DATA``
points. Tests read them in place and never copy them into the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_path() -> Path:
    """``$THRESHER_SHARED_DATA``, else ``<checkout>/../shared/data``."""
    env = os.environ.get("THRESHER_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it skip when it is absent."""
    path = shared_data_path()
    if not path.is_dir():
        pytest.skip(
            f"shared data folder not found at {path}: set THRESHER_SHARED_DATA to the folder "
            "holding alpaca/, sharegpt/ and gsm8k/ to run the real-data tests"
        )
    return path


# Offline, quiet, and an isolated model cache unless the caller chose one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("THRESHER_PROGRESS", "0")
if "THRESHER_CACHE" not in os.environ:
    import tempfile

    os.environ["THRESHER_CACHE"] = tempfile.mkdtemp(prefix="thresher-test-cache-")


@pytest.fixture(scope="session")
def arith_small():
    """A 400-example arith pool, its task and hidden labels (deterministic)."""
    from thresher.tasks.arith import ArithConfig, ArithTestbed

    return ArithTestbed(ArithConfig(pool_size=400, dev_size=60, test_size=90)).build()


@pytest.fixture(scope="session")
def micro_scored(arith_small, tmp_path_factory):
    """The arith_small pool with text + lm (micro scorer, short warm-up) signals in a store."""
    from thresher.data.store import SignalStore
    from thresher.engine.local import run_signal
    from thresher.signals.base import make_signal

    pool, task, labels = arith_small
    store = SignalStore(tmp_path_factory.mktemp("store"))
    lm = make_signal("lm", model="micro", warmup_examples=120, warmup_steps=40)
    text = make_signal("text", model="micro")
    for s in (text, lm):
        run_signal(s, pool, store, show_progress=False)
    return pool, task, labels, store, lm, text


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> str:
    """A 2-layer LlamaForCausalLM over the micro character tokenizer (4096 positions) that never
    emits EOS, so every completion runs to max_tokens: a real model for server and judge tests."""
    from thresher.models.micro import (
        MicroConfig,
        build_char_tokenizer,
        build_micro_model,
    )

    path = tmp_path_factory.mktemp("tiny-chat") / "tiny"
    tok = build_char_tokenizer()
    model = build_micro_model(tok, MicroConfig(max_position_embeddings=4096), seed=0)
    model.generation_config.eos_token_id = None
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread while a module's tiny-model server runs: generation stays fast and steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
