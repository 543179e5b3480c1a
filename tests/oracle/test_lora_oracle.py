"""The oracle's LoRA path (any HF causal LM by path): train adapters, score dev, reload for test."""
from __future__ import annotations

import pytest

from thresher.models.load import LoadedModel, load_model, save_model
from thresher.models.micro import build_char_tokenizer, build_micro_model
from thresher.models.train import TrainConfig
from thresher.oracle.core import Oracle
from thresher.tasks.arith import ArithConfig, ArithTestbed


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small Llama checkpoint written as an ordinary HF directory (loaded by path, like any hub model)."""
    tok = build_char_tokenizer()
    d = tmp_path_factory.mktemp("llama") / "model"
    save_model(LoadedModel(build_micro_model(tok, seed=0), tok, "micro", "x"), d)
    return d


def test_lora_oracle_on_a_model_path(hf_dir, tmp_path):
    pool, task, labels = ArithTestbed(ArithConfig(pool_size=80, dev_size=12, test_size=12)).build()
    train = TrainConfig.for_tier("small", steps=4, batch_size=4, lr=1e-3, lora_r=4)
    assert train.mode == "lora"
    oracle = Oracle(task, pool, model=str(hf_dir), train=train, cache_dir=tmp_path, show_progress=False)
    s = oracle.score(pool.ids[:20])
    saved = tmp_path / s.key / "model"
    assert (saved / "adapter_config.json").exists() and (saved / "adapter_model.safetensors").exists()
    assert not (saved / "model.safetensors").exists()  # only the adapter is kept
    assert s.n_examples == 16 and 0.0 <= s.value <= 1.0
    t = oracle.score_test(pool.ids[:20])
    assert t.n_items == 12 and t.split == "test"
    # the base weights are untouched: LoRA trained only the adapter
    import torch

    base = load_model(str(hf_dir)).model
    again = load_model(str(hf_dir)).model
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), again.state_dict().values()))


@pytest.mark.slow
def test_lora_on_smollm2_learns_the_answer_format(tmp_path):
    """SmolLM2-135M-Instruct + LoRA for a few steps: the answer loss on arith falls."""
    pool, task, labels = ArithTestbed(ArithConfig(pool_size=120, dev_size=6, test_size=6)).build()
    clean = [i for i in pool.ids if labels[i] == "clean"][:48]
    from thresher.models.train import attach_lora, finetune

    lm = load_model("small")
    cfg = TrainConfig.for_tier("small", steps=12, batch_size=4)
    model = attach_lora(lm.model, cfg)
    res = finetune(model, lm.tokenizer, [pool.get(i) for i in clean], cfg, show_progress=False)
    first, last = res.loss_curve[0], res.final_loss
    assert last < 0.7 * first
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_trainable < 0.05 * sum(p.numel() for p in model.parameters())
