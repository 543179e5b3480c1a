"""The micro tier: a small (0.11M parameters by default; ``micro-1m`` is 0.87M) Llama-architecture model trained from scratch, with a
character-level tokenizer. Both are ordinary Hugging Face objects (``LlamaForCausalLM``,
``PreTrainedTokenizerFast`` with a chat template), so every code path that works for a
hub model works for the micro model too.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHARS = list(string.ascii_letters + string.digits + " .,:;!?'\"()+-*/=%$#&<>[]_\n")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` with a chat template (vocab ~100)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    return fast


@dataclass(frozen=True)
class MicroConfig:
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 192
    max_position_embeddings: int = 256


MICRO_PRESETS = {
    # default: learns the arith testbed to ~90% in 600 steps, ~0.06 s/step on 2 cores
    "micro": MicroConfig(),
    # the ~1M-parameter shape of ENVIRONMENT.md: similar accuracy per step, ~4x the compute
    # a much smaller scorer for Superfiltering (IFD from a weaker model than the target)
    "micro-tiny": MicroConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96),
    "micro-1m": MicroConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384),
}


def build_micro_model(tokenizer, config: MicroConfig = MicroConfig(), seed: int = 0):
    """A freshly initialised LlamaForCausalLM sized for the character vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
