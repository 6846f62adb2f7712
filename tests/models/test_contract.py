"""The model contract (``models/base.py``), checked for every model registered in
``calosim.models`` (a new model file is picked up automatically) and for the template in
``docs/models.md``: registration and config, sample shape/finiteness, reproducibility with a
seed, ``export_module`` equal to ``sample``, a state-dict round trip, and one train step
changing the weights. A model that cannot meet an item declares it in ``contract_exemptions``."""

from __future__ import annotations

import math
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from calosim.geometry import Geometry
from calosim.models import ShowerModel, TrainConfig, _REGISTRY, get_model_class, list_models
from calosim.models._random import standard_normal
from toys import FakeConditions, FakeCtx, two_layer_geometry

pytestmark = pytest.mark.usefixtures("one_thread")
COND_DIM = 2  # encoded energy + one more column
DOCS = Path(__file__).parents[2] / "docs" / "models.md"


def _package_models() -> list[str]:
    return [n for n in list_models() if get_model_class(n).__module__.startswith("calosim.models.")]


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    """The smallest model of docs/models.md, executed and registered for this module only."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert code, f"{DOCS}: no python template"
    before = set(_REGISTRY)
    module = types.ModuleType("calosim.models.docs_template")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    try:
        exec(compile(code.group(1), str(DOCS), "exec"), module.__dict__)  # noqa: S102 - our own docs
        (name,) = set(_REGISTRY) - before
        yield name
        del _REGISTRY[name]
    finally:
        del sys.modules[module.__name__]


@pytest.fixture(params=[*_package_models(), "docs-template"])
def name(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("template") if request.param == "docs-template" else request.param


def _exempt(cls: type[ShowerModel], item: str) -> None:
    if item in cls.contract_exemptions:
        pytest.skip(f"{cls.name} declares: {cls.contract_exemptions[item]}")


def _batch(geo: Geometry, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sparse non-negative showers (MeV = the identity transform's space), 0.9 E_inc; conditions (n, 2)."""
    g = torch.Generator().manual_seed(seed)
    e = torch.exp(torch.empty(n, 1).uniform_(math.log(1e3), math.log(1e5), generator=g))
    w = torch.rand(n, geo.n_cells, generator=g) ** 4 * (torch.rand(n, geo.n_cells, generator=g) < 0.5)
    return 0.9 * e * w / w.sum(1, keepdim=True), torch.cat([FakeConditions.encode(e), torch.rand(n, 1, generator=g)], 1)


def _build(name: str, geo: Geometry) -> ShowerModel:
    cls = get_model_class(name)
    torch.manual_seed(0)
    return cls(geo, COND_DIM, {"transform": "identity"} if "transform" in cls.default_config else {})


def _trained(name: str, geo: Geometry) -> tuple[ShowerModel, FakeCtx]:
    """Statistics fitted and one train step taken, as the framework would on a fresh run."""
    model = _build(name, geo)
    ctx = FakeCtx(model)
    x, cond = _batch(geo, 32)
    model.fit_statistics(x, cond, ctx)
    model.train_step(x, cond, ctx)
    return model, ctx


def test_registered_with_a_typed_config(name: str) -> None:
    cls = get_model_class(name)
    assert cls.name == name and name in list_models()
    assert issubclass(cls.Config, TrainConfig) and cls.Config is not TrainConfig
    cfg = cls.Config()
    assert cfg.steps is not None or cfg.epochs is not None  # a recipe that trains without extra arguments
    assert cls.default_config == {k: v for k, v in cls.default_config.items()}  # derived, JSON-able
    with pytest.raises(ValueError, match="unknown key 'not_a_key'; valid keys: "):
        cls(two_layer_geometry(), COND_DIM, {"not_a_key": 1})


def test_sample_shape_finite_and_reproducible(name: str) -> None:
    geo = two_layer_geometry()
    model = _build(name, geo).eval()
    cond = _batch(geo, 9)[1]
    x = model.sample(cond, torch.Generator().manual_seed(1))
    assert x.shape == (9, model.data_dim) and torch.isfinite(x).all()
    _exempt(type(model), "reproducible")
    torch.testing.assert_close(model.sample(cond, torch.Generator().manual_seed(1)), x, rtol=0, atol=0)
    assert not torch.equal(model.sample(cond, torch.Generator().manual_seed(2)), x)


def test_export_module_equals_sample(name: str) -> None:
    _exempt(get_model_class(name), "export")
    geo = two_layer_geometry()
    model = _trained(name, geo)[0].eval()
    cond = _batch(geo, 7, seed=3)[1]
    want = model.sample(cond, torch.Generator().manual_seed(5))
    f = model.export_module().eval()
    z = standard_normal(7, int(f.latent_dim), torch.Generator().manual_seed(5), cond.device)
    with torch.no_grad():
        torch.testing.assert_close(f(z, cond), want)


def test_state_dict_round_trip(name: str) -> None:
    geo = two_layer_geometry()
    a = _trained(name, geo)[0].eval()
    b = _build(name, geo)
    b.load_state_dict(a.state_dict())
    cond = _batch(geo, 6, seed=4)[1]
    torch.testing.assert_close(b.eval().sample(cond, torch.Generator().manual_seed(0)),
                               a.sample(cond, torch.Generator().manual_seed(0)))


def test_one_train_step_changes_the_weights(name: str) -> None:
    _exempt(get_model_class(name), "train_step")
    geo = two_layer_geometry()
    model = _build(name, geo)
    ctx = FakeCtx(model)
    x, cond = _batch(geo, 32)
    model.fit_statistics(x, cond, ctx)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    losses = model.train_step(x, cond, ctx)
    assert losses and all(math.isfinite(float(v)) for v in losses.values())
    changed = [k for k, p in model.named_parameters() if not torch.equal(before[k], p)]
    assert changed, "no parameter changed"
