"""The streamed text statistics of the causal-LM pass, on batches whose answer is known by construction."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kddoctor.checks.lm_text import _classes, _row_classes
from kddoctor.lm.text_stats import TextStats, token_classes

STRINGS = ["a", "b", " c", "\n", "A", "B", "    ", "\t"]  # ids 4, 5 upper-case; 6, 7 indentation


def _batch(rows: list[list[int]], lengths: list[int] | None = None):
    ids = torch.tensor(rows)
    lengths = lengths or [ids.shape[1]] * len(rows)
    mask = torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]
    return ids, mask, ids.masked_fill(~mask, -100)


def _stats(rows, lengths=None) -> dict:
    names, table = token_classes(STRINGS)
    stats = TextStats(classes=table)
    ids, mask, labels = _batch(rows, lengths)
    stats.update(ids, mask, labels, len(STRINGS))
    return names, stats.compute()


def test_rows_with_no_token_of_a_class_are_counted_and_padding_holds_none():
    # row 0 has an upper-case token only in its padding: it holds none; row 2 is all padding: not a row
    names, out = _stats([[0, 1, 4], [0, 5, 6], [4, 4, 4]], lengths=[2, 3, 0])
    absent = out["row_absent"].sum(0)
    assert out["row_attended"].sum() == 2
    assert absent[names.index("upper")] == 1 and absent[names.index("indent")] == 1
    assert absent[names.index("digit")] == 2  # no row holds a digit


def _ev(train_rows, val_rows) -> SimpleNamespace:
    names, table = token_classes(STRINGS)
    splits = {}
    for split, rows in (("train", train_rows), ("val", val_rows)):
        stats = TextStats(seed=3, classes=table)
        stats.update(*_batch(rows), len(STRINGS))
        splits[split] = {"text": stats.compute()}
    n = {split: sum(len(r) for r in rows) for split, rows in (("train", train_rows), ("val", val_rows))}
    return SimpleNamespace(
        splits=splits,
        token_classes=(names, table),
        train=SimpleNamespace(effective_n=n["train"]),
        val=SimpleNamespace(effective_n=n["val"]),
    )


def test_half_the_train_documents_lower_cased_empty_half_the_train_rows_of_upper_case():
    g = torch.Generator().manual_seed(0)
    val = [[int(x) for x in torch.randint(0, 8, (12,), generator=g)] + [4] for _ in range(400)]
    lowered = [[t if t not in (4, 5) else t - 4 for t in row] for row in val]
    train = [lowered[i] if i % 2 else val[i] for i in range(len(val))]  # every other document lowered
    e = _row_classes(_ev(train, val))
    assert e["row_class_absent_name"] == "upper" and e["row_class_absent_side"] == "train"
    assert e["row_class_absent_train"] == pytest.approx(0.5) and e["row_class_absent_val"] == 0.0
    assert 0.4 < e["row_class_absent_excess"] <= 0.5  # less the halves' own difference
    same = _row_classes(_ev(val[:200], val[200:]))  # two halves of one corpus: nothing to say
    assert same["row_class_absent_excess"] < 0.1


def test_without_a_token_class_table_there_is_no_row_statistic():
    stats = TextStats()
    stats.update(*_batch([[0, 1, 4]]), len(STRINGS))
    assert "row_absent" not in stats.compute()
    assert _row_classes(SimpleNamespace(splits={}, token_classes=None)) == {}
    assert np.isfinite(stats.compute()["labels"]).all()


def test_a_class_vanishes_only_where_most_rows_held_it():
    """All train text lower-cased: upper-case tokens, held by every val row, vanish. A class a few val
    documents carry in bulk (indentation in a fifth of the rows), nearly missing from train because
    train drew other documents, loses 90 % of its rate too, but that is another mix, not a step."""
    g = torch.Generator().manual_seed(1)
    plain = [[int(x) for x in torch.randint(0, 4, (12,), generator=g)] for _ in range(400)]
    val = [row + [4] for row in plain]
    lowered = _classes(_ev([row + [0] for row in plain], val))
    assert lowered["class_vanished_name"] == "upper" and lowered["class_vanished"] == 1.0
    assert lowered["class_vanished_rows_held"] == 1.0
    indented = [row[:6] + [6] * 6 if i % 5 == 0 else row for i, row in enumerate(plain)]  # a fifth
    few = [row[:11] + [6] if i == 0 else row for i, row in enumerate(plain)]  # one train row
    mixed = _classes(_ev(few, indented))
    assert mixed["class_rates"]["indent"]["val"] > 0.05 and mixed["class_rates"]["indent"]["train"] < 0.001
    assert mixed["class_vanished"] < 0.5 and mixed["class_vanished_name"] != "indent"  # fails from 0.85
