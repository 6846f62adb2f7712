"""The demo's whole loop (simulate -> train -> generate -> evaluate) at tiny sizes."""

import json

from calosim.demo import run_demo


def test_quick_demo_writes_report(tmp_path):
    out = tmp_path / "demo"
    metrics = run_demo(out, quick=True, seed=3)
    for f in ["mean_showers.png", "response.png", "report/index.html", "report/metrics.json", "demo_summary.json",
              "run/model.safetensors", "data/generated_spots.h5"]:
        assert (out / f).exists(), f
    on_disk = json.loads((out / "report" / "metrics.json").read_text())
    names = [s["name"] for s in on_disk["samples"]]
    assert names == ["spots", "reference (seed 2)"] == [s["name"] for s in metrics["samples"]]
    model, ideal = on_disk["samples"]
    # a second reference sample is much closer to the reference than a 20-step model
    assert ideal["mean_separation_power"] < model["mean_separation_power"]
    html = (out / "report" / "index.html").read_text()
    assert "spots" in html and "http://" not in html and "https://" not in html
