"""Hadron showers in the Geant4 engine (FTFP_BERT on the stand-in data): known answers, few showers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Never import geant4_pybind here: without GEANT4_DATA_DIR its import offers to download data.
if importlib.util.find_spec("geant4_pybind") is None:
    pytest.skip("needs the extra calosim[geant4]", allow_module_level=True)

from calosim.geometry import get_geometry
from calosim.simulate import simulate
from calosim.simulate.g4data import DATASETS, data_env, gamma_nuclear_xs, gdr_parameters, neutron_xs
from calosim.simulate.geant4 import HADRON_PHYSICS_LIST, PHYSICS_LIST, Geant4Engine


def _layer_sums(data, geo) -> np.ndarray:  # noqa: ANN001 - a ShowerData
    """Per-layer energy, cells + overflow, ``(n, n_layers)`` MeV."""
    return np.stack([data.showers[:, sl].sum(1) for sl in geo.layer_slices], 1) + data.overflow


def test_pions_shower_deeper_and_respond_less_than_electrons(standin: Path) -> None:
    """calogan (80 x 2 mm Pb + 4 mm LAr: 27 X0 but only 1.3 lambda_I) at 3 GeV, 12 showers each.

    Known answers: e/pi > 1 (non-compensation, nuclear binding, and leakage out of 1.3 lambda_I);
    a pion starts its shower later (layer 0, 15 periods, holds less of its energy) and leaks
    through the back (the 7-period last layer holds more: electrons leave ~0.1 % there).
    """
    geo = get_geometry("calogan")
    elec = simulate(geo, "e+", 12, energy="3", engine="geant4", seed=21)
    pion = simulate(geo, "pi+", 12, energy="3", engine="geant4", seed=21)
    le, lp = _layer_sums(elec, geo), _layer_sums(pion, geo)
    resp_e = le.sum(1) / elec.incident_energies[:, 0]
    resp_p = lp.sum(1) / pion.incident_energies[:, 0]
    assert 0.85 < resp_e.mean() < 1.15, resp_e
    assert np.all(lp.sum(1) > 0)
    assert resp_e.mean() / resp_p.mean() > 1.2, (resp_e.mean(), resp_p.mean())
    fe, fp = le / le.sum(1, keepdims=True), lp / lp.sum(1, keepdims=True)
    assert fp[:, 0].mean() < fe[:, 0].mean() - 0.05, (fe.mean(0), fp.mean(0))
    assert fp[:, -1].mean() > fe[:, -1].mean() + 0.02, (fe.mean(0), fp.mean(0))
    # hadron files carry the hadronic list in the rule and say they are experimental
    assert pion.attrs["engine_label"] == "Geant4 11.4.1 with stand-in data"
    assert pion.attrs["hadronic_physics"] == "experimental: stand-in cross sections"
    assert "FTFP_BERT" in pion.attrs["physics_list"] and pion.attrs["particle"] == "pi+"


def test_physics_list_per_particle_and_em_unchanged_by_a_hadron_run(standin: Path) -> None:
    """e- runs use the EM list whatever ran before: the worker restarts, EM showers are identical."""
    geo = get_geometry("calogan")
    eng = Geant4Engine()
    try:
        assert eng.provenance(11)["physics_list"] == PHYSICS_LIST
        assert eng.provenance(-211)["physics_list"] == HADRON_PHYSICS_LIST
        assert eng.provenance(2212)["physics_list"] == HADRON_PHYSICS_LIST
        n = 2
        cond = (np.full(n, 2000.0), np.zeros(n), np.zeros(n), np.zeros((n, 2)))
        first = eng.simulate_block(geo, 11, *cond, np.random.default_rng(5))
        for pdg in (-211, 2212):   # pi- and protons: real showers (kinetic energy = E - m)
            showers, overflow = eng.simulate_block(geo, pdg, *cond, np.random.default_rng(6))
            total = showers.sum(1) + overflow.sum(1)
            assert np.all((total > 10.0) & (total < 2400.0)), (pdg, total)
        again = eng.simulate_block(geo, 11, *cond, np.random.default_rng(5))
        np.testing.assert_array_equal(first[0], again[0])
        with pytest.raises(ValueError, match="cannot shoot PDG id 2112"):
            eng.simulate_block(geo, 2112, *cond, np.random.default_rng(5))
    finally:
        eng.close()


# Thin Pb target (1 cm), FTFP_BERT: which process ends the primary's first step. The interaction
# probability gives the total cross section, the process shares split it: Geant4's own reading of
# the stand-in G4PARTICLEXS tables (units, grids) at the GDR peak and at 14 MeV.
_THIN_TARGET = r"""
import collections, json, sys
import geant4_pybind as g4
particle, e_mev, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])

class Det(g4.G4VUserDetectorConstruction):
    def Construct(self):
        nist = g4.G4NistManager.Instance()
        world = g4.G4LogicalVolume(g4.G4Box("W", 1 * g4.m, 1 * g4.m, 1 * g4.m),
                                   nist.FindOrBuildMaterial("G4_Galactic"), "W")
        pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), world, "W", None, False, 0)
        self.lv = g4.G4LogicalVolume(g4.G4Box("T", 0.5 * g4.m, 0.5 * g4.m, 5 * g4.mm),
                                     nist.FindOrBuildMaterial("G4_Pb"), "T")
        self.pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), self.lv, "T", world, False, 0)
        return pv

class Gun(g4.G4VUserPrimaryGeneratorAction):
    def __init__(self):
        super().__init__()
        self.gun = g4.G4ParticleGun(1)
        self.gun.SetParticleDefinition(g4.G4ParticleTable.GetParticleTable().FindParticle(particle))
        self.gun.SetParticleEnergy(e_mev * g4.MeV)
        self.gun.SetParticleMomentumDirection(g4.G4ThreeVector(0, 0, 1))
        self.gun.SetParticlePosition(g4.G4ThreeVector(0, 0, -10 * g4.cm))
    def GeneratePrimaries(self, event):
        self.gun.GeneratePrimaryVertex(event)

counts = collections.Counter()
class Steps(g4.G4UserSteppingAction):
    def UserSteppingAction(self, step):
        track = step.GetTrack()
        if track.GetTrackID() != 1:
            track.SetTrackStatus(g4.G4TrackStatus.fStopAndKill)
            return
        name = step.GetPostStepPoint().GetProcessDefinedStep().GetProcessName()
        if name != "Transportation":
            counts[name] += 1
            track.SetTrackStatus(g4.G4TrackStatus.fStopAndKill)

rm = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.Serial)
rm.SetUserInitialization(Det())
rm.SetUserInitialization(g4.FTFP_BERT())
rm.SetUserAction(Gun())
rm.SetUserAction(Steps())
for cmd in ("/control/verbose 0", "/run/verbose 0", "/process/em/verbose 0", "/process/had/verbose 0",
            "/random/setSeeds 4711 17"):
    g4.G4UImanager.GetUIpointer().ApplyCommand(cmd)
rm.Initialize()
rm.BeamOn(n)
print("RESULT " + json.dumps(dict(counts)), flush=True)
import os
os._exit(0)
"""

_PB_ATOMS_PER_CM2 = 11.35 / 207.2 * 6.02214076e23 * 1.0     # G4_Pb, 1 cm


def _thin_target(tree: Path, tmp_path: Path, particle: str, e_mev: float, n: int) -> dict[str, int]:
    env, _ = data_env(tree)
    base = {k: v for k, v in os.environ.items() if k not in DATASETS and k != "GEANT4_DATA_DIR"}
    proc = subprocess.run([sys.executable, "-c", _THIN_TARGET, particle, str(e_mev), str(n)],
                          env={**base, **env, "CI": "true", "HOME": str(tmp_path)}, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def _barn(counts: dict[str, int], process: str, n: int) -> tuple[float, float]:
    """Cross section (barn) of ``process`` from first-interaction counts, and its Poisson error."""
    n_int = sum(counts.values())
    sigma_tot = -math.log(1.0 - n_int / n) / _PB_ATOMS_PER_CM2 / 1e-24
    k = counts.get(process, 0)
    return sigma_tot * k / n_int, sigma_tot * math.sqrt(max(k, 1)) / n_int


def test_geant4_reads_the_standin_cross_sections(standin: Path, tmp_path: Path) -> None:
    e0, _, _ = gdr_parameters(82)
    counts = _thin_target(standin, tmp_path, "gamma", e0, 5000)
    sigma, err = _barn(counts, "photonNuclear", 5000)
    expect = float(gamma_nuclear_xs(82, np.array([e0]))[0]) * 1e-3
    assert abs(sigma - expect) < 4 * err + 0.05 * expect, (counts, sigma, err, expect)

    counts = _thin_target(standin, tmp_path, "neutron", 14.0, 2000)
    table = neutron_xs(82, np.array([14.0]))
    for process, kind in (("neutronInelastic", "inel"), ("hadElastic", "el")):
        sigma, err = _barn(counts, process, 2000)
        expect = float(table[kind][0])
        assert abs(sigma - expect) < 4 * err + 0.05 * expect, (process, counts, sigma, err, expect)
