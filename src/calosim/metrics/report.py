"""Human-readable output of an evaluation: a self-contained HTML page and a terminal table.

``index.html`` opens offline: inline CSS, no scripts, no web fonts, images referenced by
relative file names (the PNGs sit beside it). The report only renders records: the metrics
dict and the ``(path, caption)`` figure records of :mod:`calosim.metrics.plots`.

:class:`ReportDirectory` writes a report as a whole: into a temporary sibling directory that
replaces the target only when everything is written, so a killed evaluation never leaves new
plots beside an old ``metrics.json``.
"""

from __future__ import annotations

import html
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import write_text_atomic

__all__ = ["REPORT_FILES", "ReportDirectory", "angle_lines", "format_terminal_table", "memorization_lines",
           "summary_rows", "write_report"]

#: The files a report directory holds besides its ``*.png`` plots.
REPORT_FILES = ("index.html", "metrics.json")

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:36px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 8px}
.meta{color:#555;font-size:14px;margin-bottom:12px}
table{border-collapse:collapse;font-size:14px;background:#fff;margin:6px 0 10px}
th,td{border:1px solid #d5d5d5;padding:5px 10px;text-align:right;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.l,th.l{text-align:left}
tr.warn td{background:#fff7e6}
.good{color:#11762b;font-weight:600}.mid{color:#a35f00;font-weight:600}.bad{color:#b3261e;font-weight:600}
.help{background:#fff;border-left:4px solid #5790fc;padding:10px 16px;font-size:14px;line-height:1.5;max-width:980px}
.help li{margin:3px 0}
figure{margin:18px 0 28px;background:#fff;border:1px solid #e2e2e2;padding:10px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#333;margin-top:8px;line-height:1.45}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
code{background:#f0f0f0;padding:1px 4px;border-radius:3px}
.warnings{color:#8a4b00;font-size:14px}
"""


def _f(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _pm(v: Any, e: Any, fmt: str = ".3f") -> str:
    if v is None:
        return "–"
    return f"{format(v, fmt)} ± {format(e, fmt.lstrip('+'))}" if e is not None else format(v, fmt)


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """One row of display strings per generated sample (shared by the HTML and terminal tables)."""
    rows = []
    for s in metrics.get("samples", []):
        c = s.get("classifier") or {}
        low, high = c.get("low") or {}, c.get("high") or {}
        fpd, kpd = s.get("fpd") or {}, s.get("kpd") or {}
        rows.append({
            "sample": str(s.get("name")), "n": str(s.get("n")),
            "auc_low": _pm(low.get("auc"), low.get("auc_err")) if low else "–",
            "auc_high": _pm(high.get("auc"), high.get("auc_err")) if high else "–",
            "fpd": _pm(fpd.get("value"), fpd.get("err"), ".3g") if fpd else "–",
            "kpd": _pm(kpd.get("value"), kpd.get("err"), ".3g") if kpd else "–",
            "sp": _pm(s.get("mean_separation_power"), s.get("mean_separation_power_err"), ".4f"),
            "sp_null": _f(s.get("mean_separation_power_null"), ".4f"),
            "worst": ", ".join(s.get("worst_observables") or []),
        })
    return rows


_COLS = [("sample", "sample"), ("n", "showers"), ("auc_low", "AUC low-level"), ("auc_high", "AUC high-level"),
         ("fpd", "FPD"), ("kpd", "KPD"), ("sp", "mean sep. power"), ("sp_null", "noise floor"),
         ("worst", "3 worst observables")]


def _columns(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary columns; FPD/KPD headed with their convention when it is the challenge's."""
    conv = {(s.get("fpd") or {}).get("convention") for s in metrics.get("samples", [])}
    if "challenge" not in conv:
        return _COLS
    return [(k, f"{h} x10^3 (challenge)" if k in ("fpd", "kpd") else h) for k, h in _COLS]


def format_terminal_table(metrics: dict[str, Any], *, width: int = 160) -> str:
    """The summary table as text for the CLI (rich box drawing, no colour codes)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"calosim evaluation vs reference ({metrics.get('reference', {}).get('n', '?')} showers, "
                    f"geometry {metrics.get('geometry', '?')})", title_justify="left")
    cols = _columns(metrics)
    for key, head in cols:
        t.add_column(head, justify="left" if key in ("sample", "worst") else "right", overflow="fold")
    for r in summary_rows(metrics):
        t.add_row(*[r[k] for k, _ in cols])
    con = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    con.print(t)
    extra = [f"  {x}" for x in angle_lines(metrics)]
    extra += [f"  ! {s['name']}: {w}" for s in metrics.get("samples", []) for w in s.get("warnings", [])]
    return con.export_text().rstrip() + ("\n" + "\n".join(extra) if extra else "") + "\n"


def _res(r: dict[str, Any] | None) -> str:
    r = r or {}
    if r.get("mean") is None:
        return "–"
    return f"{_pm(r.get('mean'), r.get('mean_err'), '+.2f')}, width {_pm(r.get('std'), r.get('std_err'), '.2f')}"


def angle_lines(metrics: dict[str, Any]) -> list[str]:
    """The principal-axis angle check as plain-text lines (empty without varying angles in the reference)."""
    ref = (metrics.get("reference") or {}).get("angles")
    if not ref:
        return []
    lines = [f"principal-axis theta - conditioned theta (deg): reference {_res(ref.get('theta_residual'))}"]
    for s in metrics.get("samples", []):
        a = s.get("angles")
        lines.append(f"  {s.get('name')}: " + (_res(a.get("theta_residual")) if a else "no angles in the file"))
    return lines


def _auc_class(v: Any) -> str:
    if v is None:
        return ""
    return "good" if v < 0.6 else ("mid" if v < 0.8 else "bad")


def _sp_class(v: Any) -> str:
    if v is None:
        return ""
    return "good" if v < 0.02 else ("mid" if v < 0.1 else "bad")


def _summary_table(metrics: dict[str, Any]) -> str:
    e = html.escape
    cols = _columns(metrics)
    head = "".join(f'<th class="{"l" if k in ("sample", "worst") else ""}">{e(h)}</th>' for k, h in cols)
    body = []
    for s, r in zip(metrics.get("samples", []), summary_rows(metrics)):
        c = s.get("classifier") or {}
        cls = {"auc_low": _auc_class((c.get("low") or {}).get("auc")),
               "auc_high": _auc_class((c.get("high") or {}).get("auc")),
               "sp": _sp_class(s.get("mean_separation_power"))}
        cells = "".join(
            f'<td class="{"l " if k in ("sample", "worst") else ""}{cls.get(k, "")}">{e(r[k])}</td>' for k, _ in cols)
        body.append(f'<tr class="{"warn" if s.get("warnings") else ""}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_HELP = """
<div class="help"><b>How to read this report.</b>
<ul>
<li><b>Classifier AUC</b>: a neural network is trained to tell reference from generated showers
(low-level: all cell energies / E<sub>inc</sub>; high-level: the observables below). <b>0.5 = indistinguishable</b>;
1.0 = perfectly separable. The error is the spread over cross-validation folds.</li>
<li><b>Separation power</b> of one observable's histograms, &frac12;&sum;(p&minus;q)&sup2;/(p+q), runs from
<b>0 (identical) to 1 (disjoint)</b>. The <i>noise floor</i> is its mean for two samples of the same sizes drawn
from one distribution: a value within a few errors of it means no difference is detectable with these statistics.</li>
<li><b>FPD</b> (Fr&eacute;chet physics distance) and <b>KPD</b> (kernel physics distance) compare the joint
distribution of the standardised high-level observables; <b>~0 is ideal</b> &mdash; judge a value against its
error (a value compatible with 0 within the error shows no difference).</li>
<li>The <b>response</b> plot shows &lang;E<sub>dep</sub>/E<sub>inc</sub>&rang; and &sigma;/&mu; per incident-energy bin;
bins without reference showers (extrapolation) are shaded.</li>
<li>The <b>memorisation</b> test (if a training sample was given) compares nearest-neighbour distances of generated
showers to the training set with those of held-out reference showers, and asks the same question against showers the
model never saw. It reports two diagnoses: <b>memorisation</b> (generated showers are copies or near-copies of
training showers: closer to them than to unseen ones) and <b>under-dispersion</b> (generated showers are too close to
the typical shower, so close to <i>any</i> real shower: a lack of variety, not copying).</li>
</ul></div>
"""


def _observable_table(s: dict[str, Any], top: int | None = None) -> str:
    obs = s.get("observables") or {}
    names = sorted(obs, key=lambda k: -(obs[k].get("separation_power") or 0.0))
    if top is not None:
        names = names[:top]
    rows = []
    for k in names:
        m = obs[k]
        rows.append(
            f'<tr><td class="l">{html.escape(k)}</td>'
            f'<td class="{_sp_class(m.get("separation_power"))}">{_pm(m.get("separation_power"), m.get("separation_power_err"), ".4f")}</td>'
            f'<td>{_f(m.get("separation_power_null"), ".4f")}</td>'
            f'<td>{_pm(m.get("chi2"), m.get("chi2_err"), ".4f")}</td>'
            f'<td>{_pm(m.get("w1"), m.get("w1_err"), ".4f")}</td>'
            f'<td>{_pm(m.get("ks"), m.get("ks_err"), ".4f")}</td></tr>')
    head = ("<tr><th class='l'>observable</th><th>separation power</th><th>noise floor</th><th>&chi;&sup2;</th>"
            "<th>W1 / &sigma;<sub>ref</sub></th><th>KS</th></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _sample_section(s: dict[str, Any]) -> str:
    e = html.escape
    parts = [f"<h3>{e(str(s.get('name')))}</h3>"]
    info = [f"{s.get('n')} showers"]
    if s.get("file"):
        info.append(f"file <code>{e(str(s['file']))}</code>")
    cond = s.get("conditions") or {}
    if cond.get("e_inc_ks") is not None:
        info.append(f"KS of the incident-energy distributions {cond['e_inc_ks']:.3f}")
    resp = s.get("response") or {}
    if resp.get("max_abs_mean_pull") is not None:
        info.append(f"largest response pull {resp['max_abs_mean_pull']:.1f} &sigma;")
    parts.append(f'<div class="meta">{" · ".join(info)}</div>')
    if s.get("warnings"):
        parts.append('<div class="warnings">' + "<br>".join("&#9888; " + e(w) for w in s["warnings"]) + "</div>")
    mem = s.get("memorization")
    if mem:
        parts.append('<div class="meta">' + "<br>".join(e(x) for x in memorization_lines(mem)) + "</div>")
    n_obs = len(s.get("observables") or {})
    parts.append(f"<details open><summary>10 observables with the largest separation power</summary>"
                 f"{_observable_table(s, 10)}</details>")
    parts.append(f"<details><summary>all {n_obs} observables</summary>{_observable_table(s)}</details>")
    return "".join(parts)


def _figures_html(figs: Sequence[tuple[int, Path, str]], out: Path) -> str:
    e = html.escape
    parts = []
    for i, path, cap in figs:
        try:
            rel = path.resolve().relative_to(out.resolve()).as_posix()
        except ValueError:
            rel = path.name  # not under out_dir: still only a local relative reference
        parts.append(f'<figure id="fig{i}"><img src="{e(rel)}" alt="{e(path.stem)}" loading="lazy">'
                     f"<figcaption><b>Figure {i}.</b> {e(cap)}</figcaption></figure>")
    return "".join(parts)


def _ratio(v: Any, err: Any) -> str:
    return _pm(v, err, ".3f")


def _seed_section(metrics: dict[str, Any], figs: str) -> str:
    """Seed 003's ILD observables: the three plots, then E_vis means / widths per E_inc bin per sample."""
    samples = [s for s in metrics.get("samples", []) if s.get("visible_energy")]
    if not samples and not figs:
        return ""
    parts = ["<h2>Seed observables (ILD)</h2>",
             '<div class="meta">As in seed 003 (BIB-AE / WGAN / flows on the ILD calorimeters): the cell-energy '
             "spectrum, the number of hits and the visible energy sum, and the means and widths of the visible "
             "energy per incident-energy bin.</div>", figs]
    head = ("<tr><th>E<sub>inc</sub> [GeV]</th><th>showers ref / gen</th><th>&lang;E<sub>vis</sub>&rang; ref [MeV]</th>"
            "<th>&lang;E<sub>vis</sub>&rang; gen [MeV]</th><th>gen / ref</th><th>&sigma; ref [MeV]</th>"
            "<th>&sigma; gen [MeV]</th><th>gen / ref</th></tr>")
    for s in samples:
        ve = s["visible_energy"]
        rr, rg = ve["reference"], ve["generated"]
        edges = ve["edges"]
        rows = []
        for k in range(len(edges) - 1):
            if not (rr["n"][k] or rg["n"][k]):
                continue
            rows.append(f"<tr><td>{edges[k] / 1000:.3g}–{edges[k + 1] / 1000:.3g}</td>"
                        f"<td>{int(rr['n'][k])} / {int(rg['n'][k])}</td>"
                        f"<td>{_pm(rr['mean'][k], rr['mean_err'][k], '.0f')}</td>"
                        f"<td>{_pm(rg['mean'][k], rg['mean_err'][k], '.0f')}</td>"
                        f"<td>{_ratio(ve['mean_ratio'][k], ve['mean_ratio_err'][k])}</td>"
                        f"<td>{_pm(rr['std'][k], rr['std_err'][k], '.0f')}</td>"
                        f"<td>{_pm(rg['std'][k], rg['std_err'][k], '.0f')}</td>"
                        f"<td>{_ratio(ve['width_ratio'][k], ve['width_ratio_err'][k])}</td></tr>")
        parts.append(f"<details open><summary>visible energy per incident-energy bin: "
                     f"{html.escape(str(s.get('name')))}</summary><table><thead>{head}</thead>"
                     f"<tbody>{''.join(rows)}</tbody></table></details>")
    return "".join(parts)


def _angles_section(metrics: dict[str, Any], figs: str) -> str:
    """The principal-axis incidence-angle check (reference and each sample), if the reference has angles."""
    ref = (metrics.get("reference") or {}).get("angles")
    if not ref:
        return ""
    head = ("<tr><th class='l'>sample</th><th>showers with an axis / without</th>"
            "<th>&theta;<sub>PCA</sub> &minus; &theta; mean [deg]</th><th>width (std) [deg]</th><th>width 68 % [deg]</th>"
            "<th>&phi;<sub>PCA</sub> &minus; &phi; mean [deg]</th><th>width (std) [deg]</th>"
            "<th>SP &theta;<sub>PCA</sub></th><th>SP &theta; residual</th></tr>")

    def row(name: str, a: dict[str, Any] | None) -> str:
        if not a:
            return f'<tr><td class="l">{html.escape(name)}</td><td colspan="8" class="l">no incidence angles in the file</td></tr>'
        t, p = a.get("theta_residual") or {}, a.get("phi_residual") or {}
        obs = a.get("observables") or {}

        def sp(k: str) -> str:
            m = obs.get(k) or {}
            return _pm(m.get("separation_power"), m.get("separation_power_err"), ".4f") if m else "–"

        n_ax = (a.get("n") or 0) - (a.get("n_undefined") or 0)
        return (f'<tr><td class="l">{html.escape(name)}</td><td>{n_ax} / {a.get("n_undefined")}</td>'
                f"<td>{_pm(t.get('mean'), t.get('mean_err'), '+.2f')}</td><td>{_pm(t.get('std'), t.get('std_err'), '.2f')}</td>"
                f"<td>{_f(t.get('width68'), '.2f')}</td><td>{_pm(p.get('mean'), p.get('mean_err'), '+.2f')}</td>"
                f"<td>{_pm(p.get('std'), p.get('std_err'), '.2f')}</td><td>{sp('pca_theta')}</td>"
                f"<td>{sp('theta_residual')}</td></tr>")

    rows = [row("reference", ref)] + [row(str(s.get("name")), s.get("angles")) for s in metrics.get("samples", [])]
    return ("<h2>Incidence angle (principal axis)</h2>"
            '<div class="meta">Seed 003\'s PCA check: each shower\'s incidence angle estimated from the principal '
            "axis of its hits (energy-weighted PCA of the cell positions) and its residual against the angle in the "
            f"file. A model that reproduces the angle has the reference's residuals (the estimator's own bias and "
            f"resolution). Azimuth residuals for showers at &theta; &ge; {ref.get('min_phi_theta_deg', 0):g}&deg;; "
            f"showers with fewer than {ref.get('min_hits', '?')} hits or hits in one layer have no axis.</div>"
            f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>{figs}")


def memorization_lines(mem: dict[str, Any]) -> list[str]:
    """The two diagnoses of the memorisation test as plain-text lines (report and terminal)."""

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    lines = [
        f"memorisation (copies / near-copies of training showers): {'YES' if mem.get('memorization') else 'no'} "
        f"- copy ratio {_f(mem.get('copy_ratio'))} (~1 without copying), exact copies {pct(mem.get('frac_exact'))}, "
        f"closer than the held-out {pct(mem.get('expected_frac'))} quantile: {pct(mem.get('frac_close'))} "
        f"(against unseen showers {pct(mem.get('frac_close_unseen'))})",
        f"under-dispersion (showers too close to the typical one): {'YES' if mem.get('under_dispersion') else 'no'} "
        f"- NN distance ratio to training showers {_f(mem.get('ratio'))}, to unseen showers "
        f"{_f(mem.get('ratio_unseen'))} (~1 healthy), spread ratio {_f(mem.get('spread_ratio'))}",
    ]
    return lines


def write_report(metrics: dict[str, Any], figures: Sequence[tuple[Path | str, str]], out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` for a metrics dict (schema of :mod:`calosim.metrics.evaluate`).

    ``figures``: ``(path, caption[, section])`` records (:class:`calosim.metrics.plots.Figure`), the
    PNGs inside ``out_dir`` (referenced by relative name). Figures of section ``"seed"`` (the ILD
    seed plots) and ``"angles"`` go to their sections after the summary, the rest under "Plots";
    they are numbered in page order. Returns the path of ``index.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    e = html.escape
    ref = metrics.get("reference") or {}
    order = ("seed", "angles", "plots")
    by_section: dict[str, list[tuple[Path, str]]] = {k: [] for k in order}
    for f in figures:
        sec = f[2] if len(f) > 2 else "plots"  # type: ignore[misc]
        by_section[sec if sec in by_section else "plots"].append((Path(f[0]), str(f[1])))
    numbered, i = {}, 0
    for sec in order:
        numbered[sec] = [(i + k + 1, p, c) for k, (p, c) in enumerate(by_section[sec])]
        i += len(by_section[sec])
    figs = _figures_html(numbered["plots"], out)
    timings = metrics.get("timings") or {}
    total = timings.get("total")
    meta = [f"reference: {ref.get('n', '?')} showers" + (f" from <code>{e(str(ref['file']))}</code>" if ref.get("file") else ""),
            f"geometry <code>{e(str(metrics.get('geometry', '?')))}</code>",
            f"calosim {e(str(metrics.get('calosim_version', '?')))}", f"seed {metrics.get('seed', '?')}"]
    if ref.get("e_inc_min") is not None:
        meta.append(f"E<sub>inc</sub> {ref['e_inc_min'] / 1000:.3g}–{ref['e_inc_max'] / 1000:.3g} GeV")
    if "threshold_mev" in metrics:
        thr = metrics["threshold_mev"]
        meta.append(f"voxel cut {thr:g} MeV" if thr else "no voxel cut")
    if total is not None:
        meta.append(f"evaluated in {total:.1f} s")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>calosim evaluation report</title>
<style>{_CSS}</style></head>
<body><main>
<h1>calosim evaluation report</h1>
<div class="meta">{" · ".join(meta)}</div>
<h2>Summary</h2>
{_summary_table(metrics)}
{_HELP}
{_seed_section(metrics, _figures_html(numbered["seed"], out))}
{_angles_section(metrics, _figures_html(numbered["angles"], out))}
<h2>Samples</h2>
{"".join(_sample_section(s) for s in metrics.get("samples", []))}
<h2>Plots</h2>
{figs if figs else "<p>No plots were written.</p>" if not i else ""}
<p class="meta">Full numbers: <a href="metrics.json">metrics.json</a>.</p>
</main></body></html>
"""
    path = out / "index.html"
    write_text_atomic(path, doc)
    return path


# ------------------------------------------------------------------------------------------
# the report directory, written as a whole
# ------------------------------------------------------------------------------------------
def _is_report_file(p: Path) -> bool:
    return p.is_file() and (p.name in REPORT_FILES or p.suffix == ".png")


class ReportDirectory:
    """Write a report into a temporary sibling of ``out`` and swap it in whole on success.

    ``with ReportDirectory(out, overwrite) as tmp: write(tmp)``. Checked on entering, before
    any work: an existing report (``index.html`` / ``metrics.json``) is replaced only with
    ``overwrite``; a directory holding anything but a report's files is never replaced (its
    files would be lost); the parent must be writable (the temporary directory is created
    there). On an exception the temporary directory is removed and ``out`` is untouched.
    The swap is two renames (old report aside, new one in), then the old one is deleted.
    """

    def __init__(self, out: str | Path, overwrite: bool = False) -> None:
        self.shown = Path(out)  # as the user wrote it, for messages
        self.out = Path(os.path.realpath(out))  # a symlinked report directory is replaced at its target
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def check(self) -> None:
        """Raise ``FileExistsError`` / ``OSError`` (one line, naming the file) if ``out`` may not be replaced."""
        out, shown = self.out, self.shown
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{shown}: exists and is not a directory; the report needs a directory")
        if not out.is_dir():
            return
        if not os.access(out, os.W_OK | os.X_OK):
            raise OSError(f"{shown}: cannot write the report there (the directory is not writable)")
        entries = sorted(out.iterdir())
        foreign = [p for p in entries if not _is_report_file(p)]
        if foreign:
            raise FileExistsError(f"{shown / foreign[0].name}: the report directory {shown} holds files that are not "
                                  "part of a calosim report; choose a new or empty directory (nothing was replaced)")
        existing = [p for p in entries if p.name in REPORT_FILES] or entries
        if existing and not self.overwrite:
            raise FileExistsError(f"{shown / existing[0].name}: exists; pass --overwrite (overwrite=True) to replace "
                                  "the report")

    def __enter__(self) -> Path:
        self.check()
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=parent))
            os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a report directory follows the umask
        except OSError as exc:
            raise OSError(f"{self.shown}: cannot write the report there ({exc.strerror or exc})") from None
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        try:
            self.check()  # nothing appeared meanwhile that must not be replaced
            if self.out.is_dir():
                old = self.out.with_name(f".{self.out.name}.{os.getpid()}.old.tmp")
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None and not self.out.exists():
                os.replace(old, self.out)  # put the previous report back
                old = None
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def __repr__(self) -> str:
        return f"ReportDirectory({str(self.shown)!r}, overwrite={self.overwrite})"


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
