"""GPU readiness: ``lm``-signal throughput and LoRA step time against the GPU's measured bf16 roofline.

Random-initialised weights from a config (no download): the SmolLM2-135M shape and a ~1B
Llama shape (Llama-3.2-1B dimensions), built with transformers' ``LlamaConfig``. For each:

- roofline: the measured bf16 matmul rate (TFLOP/s) of a large square GEMM;
- ``lm`` signal: tokens/s of :func:`thresher.signals.lm.batched_answer_stats` (the signal's
  and the oracle ``loglik`` metric's fast path) and its model-FLOP utilisation
  (``2 * params`` FLOPs per token over the roofline);
- LoRA step: seconds per optimiser step (batch ``--batch`` x ``--seq`` tokens, bf16 weights,
  fp32 LoRA adapters, bf16 autocast, as the oracle trains on CUDA) and its utilisation
  (``~(2 + 4) * params`` FLOPs per token: forward plus activation gradients).

    python benchmarks/gpu_check.py               # on a CUDA machine
    python benchmarks/gpu_check.py --cpu-smoke   # a tiny version on CPU, in seconds (tested)
"""
from __future__ import annotations

import argparse
import json
import time


def shapes(smoke: bool) -> dict:
    from transformers import LlamaConfig

    if smoke:
        return {"tiny": LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)}
    return {
        "smollm2-135m": LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                                    rope_theta=100000.0),
        "llama-1b": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096, tie_word_embeddings=True,
                                rope_theta=500000.0),
    }


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def roofline(device, dtype, n: int, reps: int) -> float:
    """Measured matmul FLOP/s of an n x n GEMM."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def n_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n or model.config.tie_word_embeddings)


def lm_throughput(model, cfg, device, batch: int, seq: int, reps: int) -> float:
    """Tokens/s of the lm signal's batched pass (every token an answer token)."""
    import torch

    from thresher.models.evaluate import autocast_for
    from thresher.signals.lm import batched_answer_stats

    g = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(0, cfg.vocab_size, (seq,), generator=g).tolist(), [True] * seq) for _ in range(batch)]
    budget = batch * seq
    with autocast_for(model):
        batched_answer_stats(model, seqs[:2], 0, budget)  # warm-up
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            batched_answer_stats(model, seqs, 0, budget, full=True)
        sync(device)
    return batch * seq * reps / (time.perf_counter() - t)


def lora_step(model, cfg, device, batch: int, seq: int, reps: int) -> float:
    """Seconds per LoRA optimiser step (bf16 autocast on CUDA)."""
    import contextlib

    import torch

    from thresher.models.train import TrainConfig, attach_lora

    m = attach_lora(model, TrainConfig(mode="lora", steps=1))
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    m.train()

    def step():
        with amp:
            loss = m(input_ids=ids, labels=ids).loss
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        step()
    sync(device)
    return (time.perf_counter() - t) / reps


def main(argv=None) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny model on CPU, seconds (import and run check)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    smoke = a.cpu_smoke or not torch.cuda.is_available()
    if not a.cpu_smoke and smoke:
        print("no CUDA device: running the --cpu-smoke version")
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    batch, seq, reps = a.batch or (4 if smoke else 16), a.seq or (32 if smoke else 512), a.reps or (2 if smoke else 5)
    peak = roofline(device, dtype, 256 if smoke else 8192, 3 if smoke else 20)
    out = {"device": torch.cuda.get_device_name() if not smoke else "cpu", "dtype": str(dtype).split(".")[-1],
           "roofline_tflops": peak / 1e12, "batch": batch, "seq": seq, "models": {}}
    print(f"device {out['device']}: measured {out['dtype']} matmul roofline {peak / 1e12:.4g} TFLOP/s")
    for name, cfg in shapes(smoke).items():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
        P = n_params(model)
        tps = lm_throughput(model, cfg, device, batch, seq, reps)
        step = lora_step(model, cfg, device, batch, seq, reps)
        r = {"params": P, "lm_tokens_per_s": tps, "lm_mfu": tps * 2 * P / peak, "lora_step_s": step,
             "lora_tokens_per_s": batch * seq / step, "lora_mfu": batch * seq * 6 * P / step / peak}
        out["models"][name] = r
        print(f"{name}: {P / 1e6:.1f}M params | lm signal {tps:,.0f} tok/s, ratio to roofline {r['lm_mfu']:.3f} | "
              f"LoRA step {step * 1000:.1f} ms ({r['lora_tokens_per_s']:,.0f} tok/s), ratio to roofline {r['lora_mfu']:.3f}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
