"""The zoo's architectures, from a config with random weights: GPT-2 (learned positions, LayerNorm, GELU,
tied embeddings), Llama (RoPE, RMSNorm, SwiGLU, tied), GPT-NeoX (partial rotary, parallel residual,
untied embeddings), and the pure-torch TinyGPT. No dropout anywhere: a zoo student differs from its
counterfactual only in the factor a scenario plants."""

from __future__ import annotations

from torch import nn

PAD, BOS, EOS = 0, 1, 2  # the BPE tokenizer's special ids


def _heads(width: int) -> int:
    return max(1, width // 32) if width >= 32 else max(1, width // 8 if width % 8 == 0 else 1)


def gpt2(vocab: int, seq: int, width: int, layers: int, heads: int, **ids: int) -> nn.Module:
    """A GPT-2 from a config (random init, no dropout); `ids`: its pad/bos/eos token ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=seq,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **ids,
    )
    return GPT2LMHeadModel(cfg)


def build(arch: str, width: int, layers: int, vocab: int, seq: int) -> nn.Module:
    heads = _heads(width)
    ids = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    if arch == "tinygpt":
        from ..tiny_lm import TinyGPT

        return TinyGPT(width=width, layers=layers, heads=2 if width % 2 == 0 else 1, vocab=vocab, seq=seq)
    if arch == "gpt2":
        return gpt2(vocab, seq, width, layers, heads, **ids)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=max(8, (width * 8 // 3 + 7) // 8 * 8),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=seq,
            tie_word_embeddings=True,
            **ids,
        )
        return LlamaForCausalLM(cfg)
    if arch == "neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        cfg = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=seq,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            **ids,
        )
        return GPTNeoXForCausalLM(cfg)
    raise KeyError(f"no architecture {arch!r}")
