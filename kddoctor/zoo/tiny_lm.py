"""The tiny causal LMs and the text the zoo and the demo train on: byte-level models over the Python
standard library's own source (text every machine has)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..lm.engine import lm_logits

VOCAB = 256  # bytes
SEQ = 64  # tokens per training and evaluation sequence


class TinyGPT(nn.Module):
    """A decoder-only transformer: token + position embeddings, pre-norm causal self-attention blocks."""

    def __init__(
        self, width: int = 96, layers: int = 2, heads: int = 4, vocab: int = VOCAB, seq: int = SEQ
    ) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(seq, width)
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        h = self.tok(input_ids) + self.pos(torch.arange(length, device=input_ids.device))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=input_ids.device)
        return self.head(self.norm(self.blocks(h, mask=causal, is_causal=True)))


def stdlib_text(names: tuple[str, ...]) -> torch.Tensor:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((stdlib / f"{n}.py").read_bytes() for n in names)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def pretrain(model: nn.Module, seqs: torch.Tensor, steps: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        x = seqs[torch.randint(0, len(seqs), (32,), generator=gen)]
        logits = lm_logits(model(input_ids=x))[:, :-1, :VOCAB]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
