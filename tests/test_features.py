"""The single definition of the shower features: known answers, torch == numpy, the challenge's formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from calosim import features as F
from calosim.geometry import Geometry, GeometryError, get_geometry, load_calochallenge_xml


def _random_showers(geo: Geometry, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.4, 5.0, (n, geo.n_cells)) * (rng.random((n, geo.n_cells)) < 0.6)
    x[0] = 0.0  # an empty shower
    x[1, geo.layer_slices[-1]] = 0.0  # an empty layer
    return x.astype(np.float32)


def test_known_answers_on_two_cells() -> None:
    geo = get_geometry("calogan")
    lay = geo.layers[1]
    xs, ys = lay.cell_centers()
    s = np.zeros((1, geo.n_cells))
    i, j = geo.layer_slices[1].start + 3, geo.layer_slices[1].start + 40
    s[0, i], s[0, j] = 1.0, 3.0
    xi, yi, xj, yj = xs[3], ys[3], xs[40], ys[40]
    assert F.layer_energies(s, geo)[0].tolist() == [0.0, 4.0, 0.0]
    assert F.hit_counts(s, geo)[0].tolist() == [0.0, 2.0, 0.0]
    assert F.hit_counts(s, geo, threshold=2.0)[0].tolist() == [0.0, 1.0, 0.0]
    assert F.occupancy(s, geo)[0, 1] == pytest.approx(2 / lay.n_cells)
    assert F.sparsity(s, geo)[0, 1] == pytest.approx(1 - 2 / lay.n_cells)
    cx, cy = (xi + 3 * xj) / 4, (yi + 3 * yj) / 4
    np.testing.assert_allclose(F.centroids(s, geo)[0, 1], [cx, cy])
    np.testing.assert_allclose(F.widths(s, geo)[0, 1], [math.sqrt(3) / 4 * abs(xj - xi), math.sqrt(3) / 4 * abs(yj - yi)])
    ri, rj = math.hypot(xi, yi), math.hypot(xj, yj)
    assert F.radial_centroids(s, geo)[0, 1] == pytest.approx((ri + 3 * rj) / 4)
    assert F.radial_widths(s, geo)[0, 1] == pytest.approx(math.sqrt(3) / 4 * abs(rj - ri))
    # empty layers: 0, not NaN
    assert F.centroids(s, geo)[0, 0].tolist() == [0.0, 0.0] and F.widths(s, geo)[0, 2].tolist() == [0.0, 0.0]
    assert F.apply_threshold(s, geo, 2.0)[0, i] == 0.0 and F.apply_threshold(s, geo, 3.0)[0, j] == 3.0


@pytest.mark.parametrize("name", ["calogan", "calochallenge-1-pions", "calochallenge-2"])
def test_torch_front_end_equals_numpy(name: str) -> None:
    geo = get_geometry(name)
    x = _random_showers(geo, 16).astype(np.float64)
    t = torch.tensor(x, requires_grad=True)
    for fn in (F.layer_energies, F.hit_counts, F.occupancy, F.sparsity, F.centroids, F.widths,
               F.radial_centroids, F.radial_widths, F.layer_moments, F.apply_threshold):
        out = fn(t, geo)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
        np.testing.assert_allclose(out.detach().numpy(), fn(x, geo), rtol=1e-10, atol=1e-9, err_msg=fn.__name__)
    # differentiable, finite gradients also through empty layers and the width roots
    loss = (F.widths(t, geo).sum() + F.radial_widths(t, geo, eps=1e-3).sum()
            + F.centroids(t, geo).sum() + F.layer_energies(F.apply_threshold(t, geo, 0.5), geo).sum())
    loss.backward()
    assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # float32 stays float32 and the model's smoothing enters as eps / var_floor
    t32 = torch.tensor(x, dtype=torch.float32)
    w = F.widths(t32, geo, eps=torch.full((len(x), 1), 1e-4), var_floor=1.0)
    assert w.dtype == torch.float32 and (w >= 1.0 - 1e-6).all()


def test_readout_threshold_field() -> None:
    assert get_geometry("calochallenge-1-photons").readout_threshold_mev == 1.0
    assert get_geometry("calochallenge-1-pions").readout_threshold_mev == 1.0
    assert get_geometry("calochallenge-2").readout_threshold_mev == pytest.approx(0.5e-3 / 0.033)
    assert get_geometry("calochallenge-3").readout_threshold_mev == pytest.approx(0.5e-3 / 0.033)
    assert get_geometry("calogan").readout_threshold_mev == 0.0
    g = get_geometry("calochallenge-2")
    assert Geometry.from_json(g.to_json()).readout_threshold_mev == g.readout_threshold_mev
    d = json.loads(g.to_json())
    del d["readout_threshold_mev"]  # a geometry JSON written before the field existed
    assert Geometry.from_dict(d).readout_threshold_mev == 0.0
    d["readout_threshold_mev"] = -1
    with pytest.raises(GeometryError, match="readout_threshold_mev"):
        Geometry.from_dict(d)
    x = _random_showers(g, 4)
    cut = F.apply_threshold(x, g)
    assert cut.dtype == x.dtype and np.all((cut == 0) | (cut >= g.readout_threshold_mev))
    assert np.array_equal(cut, np.where(x < 0.5e-3 / 0.033, 0, x))
    assert F.apply_threshold(x, g, 0.0) is x


def test_xml_loader_recognises_official_binning(tmp_path) -> None:
    from importlib import resources

    src = resources.files("calosim") / "data" / "binning_dataset_1_photons.xml"
    copy = tmp_path / "renamed.xml"
    copy.write_text(src.read_text())
    assert load_calochallenge_xml(copy).readout_threshold_mev == 1.0
    assert load_calochallenge_xml(copy, readout_threshold_mev=0.25).readout_threshold_mev == 0.25


# ------------------------------------------------------------------------------------------
# the CaloChallenge's HighLevelFeatures.py, written out from its definitions
# ------------------------------------------------------------------------------------------
def _challenge_features(data: np.ndarray, geo: Geometry) -> dict[str, dict[int, np.ndarray]]:
    """HighLevelFeatures.CalculateFeatures (threshold 0) from the binning alone.

    Per layer id with voxels: bin edges from the voxel counts; eta = r_mid cos(alpha_mid),
    phi = r_mid sin(alpha_mid) with alpha bins of [-pi, pi] (alpha-major voxel order);
    EC = sum(c E) / (sum E + 1e-16); width = sqrt(clip(sum(c^2 E) / (sum E + 1e-16) - EC^2, 0));
    sparsity = 1 - mean(E > 0); eta/phi only for layers with more than one alpha bin.
    """
    out: dict[str, dict[int, np.ndarray]] = {k: {} for k in (
        "E_layers", "EC_etas", "EC_phis", "width_etas", "width_phis", "sparsity", "EC_r", "width_r")}
    start = 0
    for lay, lid in zip(geo.layers, geo.meta["layer_ids"]):
        n_alpha, n_r = lay.shape
        r = list(lay.r_edges_mm)
        r_mid = [r[i] + (r[i + 1] - r[i]) / 2 for i in range(n_r)]
        a_edges = np.linspace(-math.pi, math.pi, n_alpha + 1)
        a_mid = [a_edges[i] + (a_edges[i + 1] - a_edges[i]) / 2 for i in range(n_alpha)]
        rr = np.array([r_mid[i] for j in range(n_alpha) for i in range(n_r)])
        aa = np.array([a_mid[j] for j in range(n_alpha) for i in range(n_r)])
        e = data[:, start:start + n_alpha * n_r]
        start += n_alpha * n_r
        out["E_layers"][lid] = e.sum(axis=-1)
        out["sparsity"][lid] = 1.0 - (e > 0).mean(axis=-1)
        den = e.sum(axis=-1) + 1e-16
        ec_r = (rr * e).sum(axis=-1) / den
        out["EC_r"][lid] = ec_r
        out["width_r"][lid] = np.sqrt(((rr * rr * e).sum(axis=-1) / den - ec_r**2).clip(min=0.0))
        if n_alpha > 1:
            for name, c in (("etas", rr * np.cos(aa)), ("phis", rr * np.sin(aa))):
                ec = (c * e).sum(axis=-1) / den
                out[f"EC_{name}"][lid] = ec
                out[f"width_{name}"][lid] = np.sqrt(((c * c * e).sum(axis=-1) / den - ec**2).clip(min=0.0))
    return out


@pytest.mark.parametrize("name", ["calochallenge-1-photons", "calochallenge-2"])
def test_features_equal_the_challenges_formulas(name: str) -> None:
    geo = get_geometry(name)
    raw = _random_showers(geo, 48, seed=3)
    data = np.where(raw < geo.readout_threshold_mev, 0.0, raw)  # the challenge's voxel cut
    cut = F.apply_threshold(raw, geo)
    assert np.array_equal(cut, data)
    ref = _challenge_features(data.astype(np.float64), geo)  # float64: no float32 summation rounding
    ids = geo.meta["layer_ids"]
    ours = {"E_layers": F.layer_energies(cut, geo), "sparsity": F.sparsity(cut, geo),
            "EC_r": F.radial_centroids(cut, geo), "width_r": F.radial_widths(cut, geo)}
    c, w = F.centroids(cut, geo), F.widths(cut, geo)
    ours.update(EC_etas=c[..., 0], EC_phis=c[..., 1], width_etas=w[..., 0], width_phis=w[..., 1])
    for key, per_layer in ref.items():
        for lid, v in per_layer.items():
            np.testing.assert_allclose(ours[key][:, ids.index(lid)], v, rtol=1e-9, atol=1e-9, err_msg=f"{key}[{lid}]")
    assert sum(len(v) for v in ref.values()) > 3 * len(ids)  # the alpha-binned layers were compared too
