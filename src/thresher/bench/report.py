"""``thresher report RUN_DIR``: one self-contained HTML file (plots inline) for a bench run.

Sections: accuracy vs budget per method, quality vs cost, per-method diagnostics (every PNG
a method listed in ``diagnostics["artifacts"]``, captioned: THTB stage histograms, TMAP
weights, AutoSelection best-so-far, HARP leaf effects, ...; the diagnostics as a key/value
table with the full JSON folded away), the summary with paired bootstrap CIs against random,
and every row. Every plot draws a method in the same colour and marker (:func:`method_styles`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from thresher.bench.results import format_rho, inner_fidelity, load_rows, summarise
from thresher.data.io import atomic_write_text

MARKERS = "os^DvP*Xph<>d"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def method_styles(methods: list[str]) -> dict[str, dict]:
    """A stable method -> {color, marker, ls} map, shared by every plot of a report: tab20's nine
    dark then eight light colours (its greys left out) crossed with a 13-marker cycle, so no two
    of up to 221 methods look alike; ``random`` is grey and dotted, ``full`` black and dashed."""
    import matplotlib

    tab = matplotlib.colormaps["tab20"].colors
    palette = [c for i, c in enumerate(tab[0::2]) if i != 7] + [c for i, c in enumerate(tab[1::2]) if i != 7]
    out, i = {}, 0
    for m in dict.fromkeys(methods):
        if m == "random":
            out[m] = {"color": "#7f7f7f", "marker": "o", "ls": ":"}
        elif m == "full":
            out[m] = {"color": "black", "marker": "*", "ls": "--"}
        else:
            out[m] = {"color": matplotlib.colors.to_hex(palette[i % len(palette)]), "marker": MARKERS[i % len(MARKERS)], "ls": "-"}
            i += 1
    return out


def y_limits(values, margin: float = 0.1, min_span: float = 0.04) -> tuple[float, float]:
    """Accuracy axis limits fitted to the data plus a margin (at least ``min_span`` tall); 0 is kept
    only when the data come within half their spread of it, 1 is passed only by data at 1."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < min_span:
        lo, hi = (lo + hi - min_span) / 2, (lo + hi + min_span) / 2
    span = hi - lo
    bottom = 0.0 if 0 <= v.min() <= span / 2 else lo - margin * span
    top = hi + margin * span
    return max(bottom, 0.0) if v.min() >= 0 else bottom, min(top, 1.0) if v.max() < 1 else top


def _dodge(n: int, step: float = 0.012) -> np.ndarray:
    """Multiplicative sideways offsets (log axes) for n series, centred on 1."""
    return 10 ** (step * (np.arange(n) - (n - 1) / 2))


def _finish(fig, ax, ys, full, line: bool) -> None:
    """Fit the y-axis to ys; the full-pool accuracy joins the range unless that would more than double
    it, else a corner note says where it lies. ``line``: draw it as a dashed reference line."""
    lim = y_limits(ys)
    if full is not None and np.ptp(y_limits(ys + [full])) <= 2 * np.ptp(lim):
        lim = y_limits(ys + [full])
    ax.set_ylim(*lim)
    if full is not None and lim[0] <= full <= lim[1] and line:
        ax.axhline(full, ls="--", color="black", lw=1, label=f"full (all data): {full:.3f}")
    elif full is not None and not lim[0] <= full <= lim[1]:
        up = full > lim[1]
        ax.annotate(f"full (all data): {full:.3f}, {'above' if up else 'below'} this range", (0.01, 0.98 if up else 0.02),
                    xycoords="axes fraction", ha="left", va="top" if up else "bottom", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()


def _full_value(summary) -> float | None:
    return next((s["test_mean"] for s in summary if s["method"] == "full"), None)


def _budget_x(budget: str, n_pool: int | None) -> float:
    v = float(budget)
    return v / n_pool if v > 1 and n_pool else v


def metric_name(rows: list[dict]) -> str:
    """What the rows' scores are, for axis labels and captions."""
    return "gold-answer log-likelihood" if any(r.get("metric") == "loglik" for r in rows) else "accuracy"


def accuracy_figure(summary: list[dict], n_pool: int | None, styles: dict[str, dict], metric: str = "accuracy"):
    """Test score vs budget: one line per method, budgets labelled as configured (a row at budget 0,
    the base model, has no place on the log axis: the table and the cost figure show it)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    methods = [m for m in styles if m != "full" and any(s["method"] == m for s in summary)]
    ys, ticks = [], {}
    for m, off in zip(methods, _dodge(len(methods))):
        ss = sorted((s for s in summary if s["method"] == m and _budget_x(s["budget"], n_pool) > 0),
                    key=lambda s: _budget_x(s["budget"], n_pool))
        if not ss:
            continue
        x = np.array([_budget_x(s["budget"], n_pool) for s in ss])
        y, e = np.array([s["test_mean"] for s in ss]), np.array([s["test_sd"] for s in ss])
        ax.errorbar(x * off, y, yerr=e, capsize=2, lw=1.2, ms=6, mec="black", mew=0.4, label=m, **styles[m])
        ys += list(y - e) + list(y + e)
        for s, xx in zip(ss, x):
            ticks.setdefault(xx, (s["budget"], []))[1].append(s["n_selected"])
    ax.set_xscale("log")
    xs = sorted(ticks)
    ax.set_xticks(xs, [f"{ticks[x][0]}\n(n={np.median(ticks[x][1]):.0f})" for x in xs])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    if xs:
        ax.set_xlim(xs[0] / 1.4, xs[-1] * 1.4)
    ax.set_xlabel("budget as configured (fraction of the pool or example count; median subset size; log scale, "
                  "methods nudged sideways)", fontsize=9)
    ax.set_ylabel(f"test {metric} (mean over seeds ± 1 sd)")
    _finish(fig, ax, ys, _full_value(summary), line=True)
    return fig


def cost_figure(summary: list[dict], n_pool: int | None, styles: dict[str, dict], metric: str = "accuracy"):
    """Test score vs the wall-clock seconds a selection cost (every method pays the final fine-tune,
    so oracle runs alone put most methods at x=1); marker size grows with the budget, points of
    searching methods are labelled with the oracle runs and proxy calls they spent."""
    import matplotlib.ticker

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    ys, allx = [], []
    methods = [m for m in styles if m != "full" and any(s["method"] == m for s in summary)]
    methods += ["full"] if any(s["method"] == "full" for s in summary) else []
    off = {}  # points that tie in cost and accuracy are spread sideways
    for s in summary:
        twins = [t for t in summary if abs(t["wall_s"] - s["wall_s"]) <= 0.02 * max(s["wall_s"], 1)
                 and abs(t["test_mean"] - s["test_mean"]) < 0.002]
        off[id(s)] = _dodge(len(twins), 0.02)[[id(t) for t in twins].index(id(s))]
    sizes = {b: 5.5 + 3 * i for i, b in enumerate(sorted({_budget_x(s["budget"], n_pool) for s in summary}))}
    for m in methods:
        ss = sorted((s for s in summary if s["method"] == m), key=lambda s: _budget_x(s["budget"], n_pool))
        x = np.array([max(s["wall_s"], 0.1) * off[id(s)] for s in ss], dtype=float)
        y = np.array([s["test_mean"] for s in ss])
        st = styles[m]
        ax.plot(x, y, lw=0.8, alpha=0.7, color=st["color"], ls=st["ls"])
        for j, (s, xx, yy) in enumerate(zip(ss, x, y)):
            ax.plot([xx], [yy], ls="none", marker=st["marker"], color=st["color"], ms=sizes[_budget_x(s["budget"], n_pool)],
                    mec="black", mew=0.4, label=m if j == 0 else "_nolegend_")
            spent = [f"{s['oracle_runs']:g} runs"] if s["oracle_runs"] > 1 else []
            spent += [f"{s['proxy_calls']:g} proxy calls"] if s["proxy_calls"] else []
            if spent:
                ax.annotate(f"{s['budget']}: {', '.join(spent)}", (xx, yy), xytext=(6, 3), textcoords="offset points", fontsize=7,
                            color=st["color"])
        ys += list(y) if m != "full" else []
        allx += list(x)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if allx:
        ax.set_xlim(min(allx) / 1.3, max(allx) * 1.6)
    ax.set_xlabel("wall-clock seconds per selection: selecting + the final fine-tune + scoring (mean over seeds, log scale;"
                  " larger marker = larger budget)", fontsize=9)
    ax.set_ylabel(f"test {metric} (mean over seeds)")
    _finish(fig, ax, ys, _full_value(summary), line=False)
    for h in ax.get_legend().legend_handles:  # one marker size in the legend, whatever the budget
        h.set_markersize(7)
    return fig


CAPTIONS = [  # artifact file name -> what the figure shows
    (r"thtb_stage(\d)_.*\.png", "THTB stage {0}: the stage's input scores, kept vs dropped, with the cut-off"),
    (r"tmap_weights\.png", "TMAP: the learned indicator weights"),
    (r"tmap_trace\.png", "TMAP: proxy score of every weight vector tried (search trace)"),
    (r"tmap_fidelity\.png", "TMAP: proxy score vs oracle score (fidelity of the proxy)"),
    (r"search\.png", "AutoSelection: dev score of every program tried and the best so far"),
    (r"leaf_effects\.png", "HARP: measured vs inferred effect of each leaf on the dev score"),
]


def caption(name: str, diagnostics: dict | None = None) -> str:
    for pat, text in CAPTIONS:
        if mt := re.fullmatch(pat, name):
            if name.startswith("thtb_stage"):
                stages = (diagnostics or {}).get("stages") or []
                i = int(mt.group(1)) - 1
                if i < len(stages) and stages[i].get("title"):
                    return f"THTB {stages[i]['title']}. The stage's input scores, kept vs dropped, with the cut-off"
            return text.format(*mt.groups())
    return Path(name).stem.replace("_", " ").capitalize()


def _brief(v, depth: int = 0) -> str:
    """One readable line for a diagnostics value."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (str, int, bool)) or v is None:
        s = str(v)
        return s if len(s) <= 140 else s[:137] + "..."
    if isinstance(v, dict):
        if depth == 0 and len(v) <= 6 and all(not isinstance(x, (dict, list)) for x in v.values()):
            return ", ".join(f"{k}: {_brief(x, 1)}" for k, x in v.items())
        keys = list(v)
        return f"{len(v)} keys: " + ", ".join(map(str, keys[:8])) + (", ..." if len(keys) > 8 else "")
    if isinstance(v, (list, tuple)):
        if len(v) <= 10 and all(not isinstance(x, (dict, list)) for x in v):
            return "[" + ", ".join(_brief(x, 1) for x in v) + "]"
        return f"list of {len(v)}" + (f" {type(v[0]).__name__}s" if v else "")
    return str(v)


def diagnostics_html(diag: dict) -> str:
    rows = "".join(f"<tr><th class='l'>{_esc(k)}</th><td class='l'>{_esc(_brief(v))}</td></tr>" for k, v in diag.items())
    text = json.dumps(diag, indent=1, default=str)
    text = text if len(text) <= 60000 else text[:60000] + "\n..."
    return (f"<table class='kv'>{rows}</table>" if rows else "<p class='meta'>no diagnostics</p>") + (
        f"<details><summary>full diagnostics (JSON)</summary><pre>{_esc(text)}</pre></details>" if rows else "")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;color:#222;font-size:15px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.better td{background:#e6f4e6}tr.worse td{background:#f8e6e6}
table.kv{font-size:14px}table.kv th{font-weight:600;white-space:nowrap;vertical-align:top}table.kv td{max-width:820px;overflow-wrap:anywhere}
.meta{color:#555;font-size:.92em}figure{margin:.4em 0}figure img{max-width:100%;border:1px solid #eee}
.diag{display:flex;flex-wrap:wrap;gap:12px}.diag figure{max-width:540px}
figcaption{font-size:14px;color:#333;margin-top:.2em}figcaption .file{color:#999;font-size:12px}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#2a5db0}pre{background:#f7f7f7;padding:.6em;font-size:13px;overflow:auto;max-height:30em}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _method_order(cfg: dict, rows: list[dict]) -> list[str]:
    listed = [m.get("label") or m.get("name") for m in cfg.get("methods", []) if isinstance(m, dict)]
    return list(dict.fromkeys([m for m in listed if m] + sorted({r["method"] for r in rows})))


def _figure(fid: str, b64: str, cap: str, alt: str) -> str:
    return (f"<figure><img id='{fid}' alt='{_esc(alt)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{cap}</figcaption></figure>")


def render(run_dir: str | os.PathLike) -> str:
    run_dir = Path(run_dir)
    rows = load_rows(run_dir)
    summary = summarise(rows)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    full = [r for r in rows if r["selector"] == "full"]
    n_pool = full[0]["n_selected"] if full else None
    order = _method_order(cfg, rows)
    styles = method_styles(order)
    present = [m for m in order if any(s["method"] == m for s in summary)]
    metric = metric_name(rows)
    name = _esc(cfg.get("name", run_dir.name))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>thresher bench {name}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1 id='title'>thresher bench: {name}</h1>",
             (f"<p class='meta'>model <b>{_esc(cfg.get('model', '?'))}</b>, train {_esc(cfg.get('train') or 'tier defaults')}, "
              f"budgets {_esc(', '.join(map(str, cfg.get('budgets') or [])) or '?')}, seeds {_esc(cfg.get('seeds'))}, "
              f"oracle budget for search methods {_esc(cfg.get('oracle_budget'))}; code commit "
              f"<code>{_esc(cfg.get('commit', '?'))}</code>; {_esc(cfg.get('machine', ''))}, Python {_esc(cfg.get('python', ''))}. "
              "Selection sees the dev split only; every final selection is scored once on test.</p>"),
             f"<h2>{metric.capitalize()} vs budget</h2>",
             _figure("plot-accuracy", _png_b64(accuracy_figure(summary, n_pool, styles, metric)),
                     f"<b>Figure 1.</b> Test {metric} of each of the {len(present)} methods at each budget (mean over seeds, "
                     "±1 sd); fine-tuning on the whole pool is the dashed black line, or a note when it lies outside "
                     "the y-axis, which is fitted to the data.",
                     f"{metric} vs budget; methods: " + ", ".join(present)),
             "<h2>Quality vs cost</h2>",
             _figure("plot-cost", _png_b64(cost_figure(summary, n_pool, styles, metric)),
                     f"<b>Figure 2.</b> Test {metric} against the wall-clock seconds a selection cost (selecting, the final "
                     "fine-tune, scoring); a larger marker is a larger budget. Points of methods that spent more than the "
                     "final fine-tune are labelled with their budget, oracle fine-tunes (runs, including the final one) "
                     "and proxy-model calls.",
                     "quality vs cost; methods: " + ", ".join(present))]

    parts.append(f"<h2>Summary</h2><p class='meta'>Mean over seeds. <i>vs random</i>: mean test-{metric} difference to "
                 "random at the same budget and seed, with a 95% paired bootstrap CI (seeds and test items resampled); "
                 "green / red rows: the CI excludes 0 (better / worse than random).</p>")
    parts.append("<table id='summary'><tr><th class='l'>method</th><th>budget</th><th>n</th><th>dev</th><th>test</th><th>sd</th>"
                 "<th>vs random</th><th>95% CI</th><th>oracle runs</th><th>proxy calls</th><th>wall s</th></tr>")
    for s in summary:
        cls = (" class='better'" if s["vs_random"] > 0 else " class='worse'") if s.get("significant") else ""
        at = f" (at {s['random_budget']})" if s.get("random_budget", s["budget"]) != s["budget"] else ""
        vs = f"{s['vs_random']:+.3f}{at}" if "vs_random" in s else ""
        ci = f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]" if "ci_low" in s else ""
        parts.append(f"<tr{cls}><td class='l'>{_esc(s['method'])}</td><td>{_esc(s['budget'])}</td><td>{s['n_selected']:.0f}</td>"
                     f"<td>{s['dev_mean']:.3f}</td><td>{s['test_mean']:.3f}</td><td>{s['test_sd']:.3f}</td><td>{vs}</td>"
                     f"<td>{ci}</td><td>{s['oracle_runs']:.1f}</td><td>{s['proxy_calls']:.1f}</td><td>{s['wall_s']:.0f}</td></tr>")
    parts.append("</table>")
    fid = inner_fidelity(rows)
    if fid:
        per = "; ".join(f"{_esc(m)} {format_rho(f['spearman'])} over {f['n']}" for m, f in fid["methods"].items())
        parts.append(f"<p class='meta' id='fidelity'><b>Inner oracle fidelity</b> (the searches scored subsets with a cheaper "
                     f"oracle; some were re-scored by the full one): Spearman {format_rho(fid['all']['spearman'])} over "
                     f"{fid['all']['n']} subsets in all; {per}.</p>")

    parts.append("<h2>Per-method diagnostics</h2>")
    for method in [m for m in order if any(r["method"] == m for r in rows)]:
        rs = sorted([r for r in rows if r["method"] == method], key=lambda r: (r["seed"], float(r["budget"])))
        figs = []
        for r in [r for r in rs if r["seed"] == rs[0]["seed"]]:  # the first seed's figures, every budget
            rid = f"{r['method']}__b{r['budget']}__s{r['seed']}".replace("/", "_")
            d = r.get("diagnostics") or {}
            for fname in d.get("artifacts", []) or []:
                p = run_dir / "artifacts" / rid / fname
                if p.suffix.lower() == ".png" and p.exists():
                    what = caption(fname, d)
                    figs.append(f"<figure><img class='diag-img' alt='{_esc(what)}' src='data:image/png;base64,"
                                f"{base64.b64encode(p.read_bytes()).decode()}'><figcaption><b>{_esc(method)}</b>, budget "
                                f"{_esc(r['budget'])}, seed {r['seed']}: {_esc(what)} <span class='file'>({_esc(fname)})"
                                f"</span></figcaption></figure>")
        parts.append(f"<h3 id='diag-{_esc(method)}'>{_esc(method)}</h3>")
        if figs:
            parts.append("<div class='diag'>" + "".join(figs[:6]) + "</div>")
            parts.append(f"<p class='meta'>Figures of seed {rs[0]['seed']}; every seed's are under "
                         f"<code>artifacts/{_esc(method)}__b*__s*/</code>.</p>")
        parts.append(f"<p class='meta'>Diagnostics of budget {_esc(rs[0]['budget'])}, seed {rs[0]['seed']}:</p>")
        parts.append(diagnostics_html({k: v for k, v in (rs[0].get("diagnostics") or {}).items() if k != "artifacts"}))

    parts.append("<h2>Rows</h2><table id='rows'><tr><th class='l'>method</th><th>budget</th><th>seed</th><th>n</th><th>dev</th>"
                 "<th>test</th><th>oracle runs</th><th>proxy calls</th><th>tokens trained</th><th>wall s</th><th class='l'>defects kept</th></tr>")
    for r in sorted(rows, key=lambda r: (float(r["budget"]), r["method"], r["seed"])):
        d = r.get("defects")
        dk = ", ".join(f"{k} {v}" for k, v in d.items() if v) if d else ""
        parts.append(f"<tr><td class='l'>{_esc(r['method'])}</td><td>{_esc(r['budget'])}</td><td>{r['seed']}</td><td>{r['n_selected']}</td>"
                     f"<td>{r['dev']:.3f}</td><td>{r['test']:.3f}</td><td>{r['oracle_runs']}</td><td>{r['proxy_calls']}</td>"
                     f"<td>{r['tokens_trained']}</td><td>{r['wall_s']:.0f}</td><td class='l'>{_esc(dk)}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    out = Path(out) if out else Path(run_dir) / "report.html"
    return atomic_write_text(out, render(run_dir))


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, chromium: str | None = None) -> dict:
    """Render the report in headless Chromium (Playwright driving the system browser), save a
    full-page screenshot and return what rendered: images, captions, table row counts and the
    diagnostics tables' font size."""
    from playwright.sync_api import sync_playwright

    exe = chromium or os.environ.get("CHROMIUM") or next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser",
                                                                      "/usr/bin/google-chrome") if Path(p).exists()), None)
    if exe is None:
        raise FileNotFoundError("no Chromium found (install Debian's chromium or set $CHROMIUM)")
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(Path(html_path).resolve().as_uri())
        info = page.evaluate("""() => ({
            title: document.getElementById('title') ? document.getElementById('title').innerText : null,
            images: Array.from(document.images).map(i => ({id: i.id, cls: i.className, alt: i.alt, w: i.naturalWidth, h: i.naturalHeight})),
            captions: Array.from(document.querySelectorAll('figcaption')).map(f => f.innerText),
            summaryRows: document.querySelectorAll('#summary tr').length,
            rows: document.querySelectorAll('#rows tr').length,
            kvTables: document.querySelectorAll('table.kv').length,
            kvFontPx: Math.min(...Array.from(document.querySelectorAll('table.kv td')).map(
                td => parseFloat(getComputedStyle(td).fontSize))),
            height: document.body.scrollHeight})""")
        page.screenshot(path=str(png_path), full_page=True)
        browser.close()
    return info


def pixel_stats(png_path: str | os.PathLike) -> dict:
    """Non-white fraction of a screenshot (a blank render is ~0)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png_path))
    rgb = img[..., :3]
    nonwhite = float((rgb.mean(axis=2) < 0.95).mean())
    return {"height": int(img.shape[0]), "width": int(img.shape[1]), "nonwhite": nonwhite, "std": float(np.std(rgb))}
