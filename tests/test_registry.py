"""Registry, build(), weighted sums, the functional namespace and the README catalog."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import losskit
import losskit.functional as LF
from losskit import LossTypeError, LossValueError
from losskit.registry import CATALOG_END, CATALOG_START, catalog_markdown, get_spec

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_catalog_is_current():
    text = README.read_text(encoding="utf-8")
    table = text.split(CATALOG_START, 1)[1].split(CATALOG_END, 1)[0].strip()
    assert table == catalog_markdown(), "README catalog is stale: run `losskit catalog --write README.md`"


# losses whose constructor has required arguments (the learnable class centres need their shape)
REQUIRED = {
    "arcface": {"embedding_dim": 8, "num_classes": 4},
    "cosface": {"embedding_dim": 8, "num_classes": 4},
    "sub_center_arcface": {"embedding_dim": 8, "num_classes": 4},
    "proxy_anchor": {"num_classes": 4, "embedding_dim": 8},
}


def test_every_registered_loss_builds_with_defaults_and_has_functional():
    for name in losskit.available():
        spec = get_spec(name)
        kwargs = REQUIRED.get(name, {})
        module = losskit.build(name, **kwargs) if spec.family != "multitask" or name == "multitask" else None
        if module is not None:
            assert isinstance(module, torch.nn.Module)
        if spec.functional is not None and spec.functional.__module__.startswith("losskit"):
            assert getattr(LF, spec.functional.__name__) is spec.functional


def test_functional_namespace_only_functions():
    assert LF.__all__
    for name in LF.__all__:
        assert inspect.isfunction(getattr(LF, name))


def test_build_forms():
    m = losskit.build({"name": "huber", "delta": 0.5})
    assert isinstance(m, losskit.HuberLoss) and m.delta == 0.5
    ws = losskit.build([{"name": "huber", "weight": 2.0}, {"name": "smooth_l1", "beta": 0.5, "weight": 0.25}])
    x, y = torch.randn(5), torch.randn(5)
    expected = 2.0 * losskit.functional.huber_loss(x, y) + 0.25 * losskit.functional.smooth_l1_loss(x, y, 0.5)
    torch.testing.assert_close(ws(x, y), expected)
    assert set(ws.last_terms) == {"huber", "smooth_l1"}
    assert not ws.last_terms["huber"].requires_grad


def test_build_errors():
    with pytest.raises(LossValueError, match=r"unknown loss 'hubr'; did you mean 'huber'"):
        losskit.build("hubr")
    with pytest.raises(LossValueError, match="needs a 'name' key"):
        losskit.build({"delta": 1.0})
    with pytest.raises(LossTypeError, match="item 0 of the loss list must be a mapping"):
        losskit.build(["huber"])
    with pytest.raises(LossTypeError, match="weight must be a number"):
        losskit.build([{"name": "huber", "weight": "x"}])
    with pytest.raises(LossValueError, match="only meaningful inside a list"):
        losskit.build({"name": "huber", "weight": 2.0})
    with pytest.raises(LossTypeError, match="build\\(\\) takes a name"):
        losskit.build(3)
    with pytest.raises(LossTypeError, match=r"loss 'focal': .*'gama'.*accepts \(.*gamma"):
        losskit.build({"name": "focal", "gama": 2.0})
    with pytest.raises(LossTypeError, match=r"loss 'arcface': .*embedding_dim"):
        losskit.build("arcface")


def test_angular_margin_losses_build_by_name():
    arc = losskit.build({"name": "arcface", "embedding_dim": 8, "num_classes": 4, "margin": 0.3})
    cos = losskit.build("cosface", embedding_dim=8, num_classes=4)
    assert isinstance(arc, losskit.ArcFaceLoss) and arc.margin == 0.3
    assert isinstance(cos, losskit.CosFaceLoss)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    expected = LF.angular_margin_loss(emb, arc.weight, labels, scale=64.0, margin=0.3, kind="arcface")
    torch.testing.assert_close(arc(emb, labels), expected)


def test_seed_004_torch_losses_buildable():
    for name in (
        "mse",
        "l1",
        "bce",
        "bce_with_logits",
        "kl_div",
        "hinge_embedding",
        "smooth_l1",
        "triplet_margin",
    ):
        assert name in losskit.available()
    # losskit's forms of torch's losses, still instances of torch's classes
    assert isinstance(losskit.build("mse"), losskit.MSELoss)
    assert isinstance(losskit.build("mse"), torch.nn.MSELoss)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(losskit.build("mse")(x, y), ((x - y) ** 2).mean())


def test_aliases_map_to_registered_names_and_build_the_same_loss():
    mapping = losskit.aliases()
    assert {"ce": "cross_entropy", "asl": "asymmetric", "softmax_focal": "focal"}.items() <= mapping.items()
    names = set(losskit.available())
    assert not names & set(mapping), "available() lists each loss once, under its registered name"
    for alias, name in mapping.items():
        assert name in names
        assert get_spec(alias) is get_spec(name)
        assert alias in get_spec(name).aliases
        if name not in REQUIRED:
            assert type(losskit.build(alias)) is type(losskit.build(name))
    assert losskit.aliases("classification") == {
        a: n for a, n in mapping.items() if get_spec(n).family == "classification"
    }
    assert losskit.aliases("no_such_family") == {}


def test_catalog_has_an_alias_column():
    rows = {
        line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[1:-1]]
        for line in catalog_markdown().splitlines()[2:]
    }
    header = [c.strip() for c in catalog_markdown().splitlines()[0].split("|")[1:-1]]
    col = header.index("aliases")
    assert rows["cross_entropy"][col] == "`ce`"
    assert rows["jaccard"][col] == "`iou_seg`, `soft_iou`"
    assert rows["huber"][col] == "-"


def test_conventions_alias_table_matches_the_registry():
    text = (README.parent / "docs" / "conventions.md").read_text(encoding="utf-8")
    conventions = text.split("## Conventions", 1)[1].split("\n## ", 1)[0]
    pairs = dict(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", conventions, flags=re.M))
    assert pairs == losskit.aliases()
