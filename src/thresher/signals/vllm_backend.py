"""vLLM backend for the model signals (GPU machines with ``pip install thresher[vllm]``).

vLLM returns *prompt logprobs*: for every position of a prompt, the log-probability of
the actual next token plus the top-``k`` alternatives. The answer loss (and so
perplexity and both IFD variants) is exact. Entropy and varentropy need the whole
next-token distribution, which vLLM does not return: from the top-``k`` list (plus the
actual token) they are computed over the renormalised truncated distribution, which
underestimates both when the tail is heavy. The signal records ``backend`` in its
params, so vLLM-computed and HF-computed values never share a cache entry.

Not exercised on the CPU-only CI machines (vLLM needs CUDA); the HF backend is the
reference implementation and the tests compare against it.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np


def vllm_available() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def truncated_entropy_stats(logprobs: list[float]) -> tuple[float, float]:
    """Entropy and varentropy of the renormalised distribution over the given logprobs."""
    lp = np.asarray(logprobs, dtype=np.float64)
    lp = lp - np.logaddexp.reduce(lp)
    p = np.exp(lp)
    h = float(-(p * lp).sum())
    v = float((p * (lp + h) ** 2).sum())
    return h, v


class VLLMScorer:
    """Answer-token statistics from vLLM prompt logprobs, for sequences of token ids."""

    def __init__(self, model: str, topk: int = 20, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, trust_remote_code: bool = False):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - GPU machines only
            raise ImportError("the vLLM backend needs `pip install thresher[vllm]` on a CUDA machine") from e
        self.topk = topk
        self.llm = LLM(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, max_logprobs=topk,
                       max_model_len=max_model_len, trust_remote_code=trust_remote_code, enable_prefix_caching=False)

    def answer_stats(self, seqs: list[tuple[list[int], list[bool]]], token_ce: bool = False):
        """Same contract as :func:`thresher.signals.lm.batched_answer_stats` with ``full=True``
        (and its ``token_ce``: per sequence, the CE of each counted answer target, in order)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=self.topk, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s, _ in seqs], sp, use_tqdm=True)
        sums = np.zeros((len(seqs), 3), dtype=np.float64)
        counts = np.zeros(len(seqs), dtype=np.int64)
        per_token = [[] for _ in seqs]
        for i, ((ids, mask), out) in enumerate(zip(seqs, outs)):
            plp = out.prompt_logprobs  # position t holds {token_id: Logprob} for token t (None at t=0)
            for t in range(1, len(ids)):
                if not mask[t] or plp is None or plp[t] is None:
                    continue
                cand = plp[t]
                actual = cand[ids[t]].logprob
                h, v = truncated_entropy_stats([c.logprob for c in cand.values()])
                ce = -actual if math.isfinite(actual) else np.inf
                sums[i] += (ce, h, v)
                counts[i] += 1
                per_token[i].append(ce)
        if token_ce:
            return sums, counts, [np.asarray(c, dtype=np.float64) for c in per_token]
        return sums, counts
