"""FACTORY parsing, batch adapters, limits, ImageFolder trees."""

import numpy as np
import pytest
import torch

from kddoctor.data import iter_batches, load_factory, parse_data_args, split_batch
from kddoctor.errors import UserError

FACTORY = """
import torch
def make(n=20, kind="tuple"):
    x = torch.randn(n, 1, 8, 8); y = torch.arange(n) % 10
    if kind == "dict":
        batches = [{"pixel_values": x[i:i+8], "labels": y[i:i+8]} for i in range(0, n, 8)]
    else:
        batches = list(zip(x.split(8), y.split(8)))
    return {"train": batches, "val": batches, "num_classes": 10}
def broken():
    raise ValueError("disk on fire")
def wrong():
    return [1, 2]
def empty():
    return {"train": [], "val": []}
"""


@pytest.fixture
def factory(tmp_path):
    f = tmp_path / "fac.py"
    f.write_text(FACTORY)
    return f


def test_factory_with_data_args_and_dict_batches(factory):
    b = load_factory(f"{factory}:make", parse_data_args(["n=24", "kind='dict'"]))
    assert b.num_classes == 10
    xs = list(iter_batches(b.splits["train"], "train"))
    assert sum(len(x) for x, _ in xs) == 24


def test_limit_trims_the_last_batch(factory):
    b = load_factory(f"{factory}:make", {"n": 40})
    xs = list(iter_batches(b.splits["val"], "val", limit=13))
    assert [len(x) for x, _ in xs] == [8, 5]


def test_module_factory():
    b = load_factory("kddoctor.demo:digits_loaders", {"train_subset": 100})
    assert len(b.splits["train"].dataset) == 100 and b.class_names[0] == "0"


@pytest.mark.parametrize(
    "ref,match",
    [
        ("nofile.py:make", "not found"),
        ("{f}:missing", "has no attribute"),
        ("{f}:broken", "raised ValueError"),
        ("{f}:wrong", "returned list"),
        ("no_such_module_x:make", "not found"),
        ("just-a-name", "not of the form"),
    ],
)
def test_factory_errors(factory, ref, match):
    with pytest.raises(UserError, match=match):
        load_factory(ref.format(f=factory))


def test_bad_data_arg_name(factory):
    with pytest.raises(UserError, match="does not take"):
        load_factory(f"{factory}:make", {"bogus": 1})
    with pytest.raises(UserError, match="key=value"):
        parse_data_args(["novalue"])


def test_empty_loader(factory):
    b = load_factory(f"{factory}:empty")
    with pytest.raises(UserError, match="the train loader is empty"):
        list(iter_batches(b.splits["train"], "train"))


def test_loader_raising_midway_names_split_and_batch():
    def gen():
        yield torch.zeros(2, 3), torch.zeros(2)
        raise OSError("corrupt image")

    with pytest.raises(UserError, match="val loader raised at batch 1: OSError"):
        list(iter_batches(gen(), "val"))


def test_one_hot_and_soft_labels_become_indices():
    x = torch.zeros(3, 4)
    onehot = torch.eye(5)[[1, 4, 2]]
    assert split_batch((x, onehot), "train", 0)[1].tolist() == [1, 4, 2]


@pytest.mark.parametrize(
    "batch,match",
    [
        (torch.zeros(3), "yield \\(inputs, targets\\)"),
        ({"foo": 1}, "expected one of"),
        ((torch.zeros(3, 2), torch.zeros(4)), "do not match"),
        (("text", torch.zeros(1)), "not a tensor"),
    ],
)
def test_unknown_batch_shapes(batch, match):
    with pytest.raises(UserError, match=match):
        split_batch(batch, "train", 3)


def test_image_folder_uses_student_timm_transforms(tmp_path):
    from PIL import Image

    from kddoctor.data import image_folder
    from kddoctor.models import build_model

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    student = build_model("timm:resnet10t?pretrained_cfg_overlay={'input_size':(3,32,32)}", 2)
    b = image_folder(tmp_path, student, batch_size=4, workers=0)
    x, y = next(iter(b.splits["train"]))
    assert b.class_names == ["cat", "dog"] and x.shape[1:] == (3, 32, 32)
