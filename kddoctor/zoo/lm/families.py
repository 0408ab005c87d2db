"""The LM zoo's model families: an architecture, a corpus, a tokenizer, and the sizes of its teacher and
students (healthy at about 1/2, 1/5 and 1/20 of the teacher's parameters; `small_*` far below them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    arch: str  # tinygpt | gpt2 | llama | neox
    corpus: str  # code | prose
    hf: bool  # saved with save_pretrained and diagnosed as hf: directories
    seq: int = 128  # tokens per row
    vocab: int = 1024  # BPE vocabulary (bytes: 256)
    teacher: tuple[int, int] = (128, 4)  # width, layers
    teacher_steps: int = 2000
    sizes: dict = field(default_factory=dict)  # size name -> (width, layers)
    steps: int = 800  # distillation steps of a healthy student
    lr: float = 2e-3
    batch: int = 16

    def size(self, name: str) -> dict:
        width, layers = self.sizes[name]
        return {"width": width, "layers": layers}

    def describe(self, name: str) -> str:
        width, layers = self.sizes[name]
        return f"width {width}, {layers} layer{'s' if layers > 1 else ''}"

    def model(self, width: int, layers: int) -> nn.Module:
        """A randomly initialised model of this family's architecture."""
        from .models import build

        return build(self.arch, width, layers, self.vocab, self.seq)


HF_SIZES = {"h2": (96, 3), "h5": (64, 2), "h20": (32, 1), "small_mild": (16, 1), "small_severe": (8, 1)}
FAMILIES = {
    "bytes": Family("bytes", "tinygpt", "code", hf=False, seq=64, vocab=256, teacher=(96, 2)),
    "gpt2": Family("gpt2", "gpt2", "code", hf=True, sizes=HF_SIZES),
    # prose is the smaller corpus (about 0.5M tokens): fewer steps keep teacher and students near 2-3 epochs
    "llama": Family("llama", "llama", "prose", hf=True, sizes=HF_SIZES, teacher_steps=1000, steps=500),
    "neox": Family("neox", "neox", "code", hf=True, sizes=HF_SIZES),
}
