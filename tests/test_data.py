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
    b = load_factory("kddoctor.zoo.demo:digits_loaders", {"train_subset": 100})
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

    from kddoctor.image_folder import image_folder
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


TINY = "?pretrained_cfg_overlay={'input_size':(3,32,32)}"  # timm models at 32x32, for speed


def digits_tree(root, classes=("0", "1"), val_classes=None, per_class=3):
    """An ImageFolder tree of sklearn digits upscaled to 32x32 RGB PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for name in names:
            d = root / split / name
            d.mkdir(parents=True)
            for i, img in enumerate(digits.images[digits.target == int(name)][:per_class]):
                png = Image.fromarray((img * 15).astype(np.uint8)).resize((32, 32)).convert("RGB")
                png.save(d / f"{i}.png")
    return root


def test_data_dir_normalizes_each_model_with_its_own_config(tmp_path, specs_run):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    # timm test_vit expects mean/std 0.5 (and 160x160); resnet10t expects ImageNet statistics
    run = specs_run("timm:test_vit?img_size=32", f"timm:resnet10t{TINY}", data_dir=digits_tree(tmp_path))
    teacher, student, bundle = run["t"], run["s"], run["b"]
    x, _ = next(iter(torch.utils.data.DataLoader(bundle.splits["val"].dataset, batch_size=6)))
    assert x.shape[1:] == (3, 32, 32) and 0 <= x.min() and x.max() <= 1  # raw [0, 1]: no Normalize
    seen = {}
    for role, wrapper in (("teacher", teacher), ("student", student)):
        wrapper.model.register_forward_pre_hook(lambda m, a, role=role: seen.__setitem__(role, a[0].clone()))
        wrapper.eval()(x)
    mean, std = (
        torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1),
    )
    assert torch.allclose(seen["teacher"], (x - 0.5) / 0.5, atol=1e-6)
    assert torch.allclose(seen["student"], (x - mean) / std, atol=1e-6)
    assert teacher.kddoctor_normalization == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert student.kddoctor_normalization["mean"] == pytest.approx(list(IMAGENET_DEFAULT_MEAN))
    assert teacher.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # still reachable through the wrapper
    assert any("160x160" in n and "32x32" in n for n in bundle.notes)


def test_data_dir_gives_one_channel_models_grayscale_images(tmp_path, specs_run):
    gray = "timm:resnet10t?in_chans=1&pretrained_cfg_overlay={'input_size':(3,32,32)}"
    run = specs_run(gray, gray, data_dir=digits_tree(tmp_path))
    x, _ = next(iter(torch.utils.data.DataLoader(run["b"].splits["val"].dataset, batch_size=6)))
    assert x.shape[1:] == (1, 32, 32)
    assert run["t"].eval()(x).shape == (6, 2) and len(run["s"].kddoctor_normalization["mean"]) == 1
    with pytest.raises(UserError, match="1-channel.*3-channel|3-channel.*1-channel"):
        specs_run(f"timm:resnet10t{TINY}", gray, data_dir=tmp_path)


def test_data_dir_val_class_missing_from_train_is_named(tmp_path):
    from kddoctor.image_folder import image_folder
    from kddoctor.models import build_model

    student = build_model(f"timm:resnet10t{TINY}", 2)
    digits_tree(tmp_path / "bad", val_classes=("0", "1", "7"))
    with pytest.raises(UserError, match="val/ has class folder '7'.*train/"):
        image_folder(tmp_path / "bad", student, batch_size=4, workers=0)
    # a val/ with fewer classes is fine: its labels keep train/'s class indices
    b = image_folder(digits_tree(tmp_path / "ok", val_classes=("1",)), student, batch_size=4, workers=0)
    assert b.class_names == ["0", "1"] and set(b.splits["val"].dataset.targets) == {1}


@pytest.mark.parametrize(
    "y,num_classes,expected,note",
    [
        (
            torch.tensor([[0.2], [0.9], [0.5]]),
            2,
            [0, 1, 1],
            "val labels given as [B, 1] floats: thresholded at 0.5",
        ),
        (
            torch.tensor([[0.0], [1.0], [1.0]]),
            None,
            [0, 1, 1],
            "val labels given as [B, 1] floats: read as class",
        ),
        (torch.tensor([0.3, 0.8, 1.0]), 2, [0, 1, 1], "val labels given as [B] floats: thresholded at 0.5"),
        (torch.tensor([[2.0], [0.0], [1.4]]), 3, [2, 0, 1], "val labels given as [B, 1] floats: rounded"),
        (torch.tensor([[2], [0], [1]]), None, [2, 0, 1], "val labels given as [B, 1] integers"),
        (["dog", "cat", "dog"], None, [1, 0, 1], "val labels given as strings: mapped through class_names"),
        (np.array(["dog", "cat", "cat"]), 2, [1, 0, 0], "val labels given as strings"),
    ],
)
def test_label_forms_are_read_and_said(y, num_classes, expected, note):
    notes: set[str] = set()
    _, out = split_batch(
        (torch.zeros(3, 4), y), "val", 0, class_names=["cat", "dog"], num_classes=num_classes, notes=notes
    )
    assert out.tolist() == expected and out.dtype == torch.long
    assert len(notes) == 1 and next(iter(notes)).startswith(note)


def test_string_labels_need_known_class_names():
    with pytest.raises(UserError, match="'bird'.*class_names"):
        split_batch((torch.zeros(2, 4), ["cat", "bird"]), "val", 2, class_names=["cat", "dog"])
    with pytest.raises(UserError, match="class_names"):
        split_batch((torch.zeros(2, 4), ("cat", "dog")), "val", 2)


def test_label_notes_reach_results_json():
    from kddoctor import diagnose

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    teacher = torch.nn.Linear(4, 2)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
        teacher.bias.zero_()
    names = ["neg", "pos"]
    train = [(x[i : i + 16], y[i : i + 16, None].float()) for i in range(0, 64, 16)]  # [B, 1] floats
    val = [(x[i : i + 16], [names[k] for k in y[i : i + 16]]) for i in range(0, 64, 16)]  # strings
    d = diagnose(teacher, torch.nn.Linear(4, 2), train, val, num_classes=2, class_names=names, checks=[])
    assert d.metrics["train"]["teacher"]["acc"] == 1.0 and d.metrics["val"]["teacher"]["acc"] == 1.0
    assert d.to_dict()["run"]["label_notes"] == [
        "train labels given as [B, 1] floats: thresholded at 0.5",
        "val labels given as strings: mapped through class_names",
    ]


RANDOM_SPLIT_FACTORY = """
import torch
def make():
    ds = torch.utils.data.TensorDataset(torch.randn(100, 1, 8, 8), torch.arange(100) % 10)
    train, val = torch.utils.data.random_split(ds, [80, 20])  # no generator: the global RNG
    return {"train": torch.utils.data.DataLoader(train, batch_size=20),
            "val": torch.utils.data.DataLoader(val, batch_size=20)}
"""


def test_seed_covers_the_data_factory(tmp_path, specs_run):
    fac = tmp_path / "fac.py"
    fac.write_text(RANDOM_SPLIT_FACTORY)
    picks = []
    for _ in range(2):
        torch.rand(7)  # whatever ran before must not matter
        run = specs_run(
            "kddoctor.zoo.demo:teacher_cnn",
            "kddoctor.zoo.demo:student_cnn",
            data=f"{fac}:make",
            num_classes=10,
        )
        picks.append(list(run["b"].splits["val"].dataset.indices))
    assert picks[0] == picks[1]
