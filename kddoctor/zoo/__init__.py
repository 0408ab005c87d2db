"""The zoo: everything kddoctor is proven on, kept apart from the product, which never imports it
(`kddoctor demo` alone does, from the CLI).

- `digits`, `demo`: scikit-learn's real digits, small training loops, the embedded default pair.
- `images`: planted pathologies on digits pairs, each with its counterfactual (`bench/zoo.py`).
- `frameworks`: replicas of KD codebases' losses and checkpoint layouts (torchdistill, mdistiller, ...).
- `tiny_lm`, `lm`, `lm_demo`: byte-level TinyGPTs on the standard library's source, the causal-LM
  zoo (`bench/lm_zoo.py`) and the causal-LM demo (GPT-2s from a transformers config, as hf: dirs).
"""
