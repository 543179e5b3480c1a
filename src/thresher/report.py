"""``thresher report RUN_DIR``: one self-contained HTML file (plots inline) for a bench run.

Sections: accuracy vs budget per method, quality vs oracle cost, per-method diagnostics
(every PNG a method listed in ``diagnostics["artifacts"]``: THTB stage histograms, TMAP
weights, AutoSelection best-so-far, HARP measured vs inferred, ...), the summary with
paired bootstrap CIs against random, and every row.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from .bench import load_rows, summarise


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _budget_x(budget: str, n_pool: int | None) -> float:
    v = float(budget)
    if v > 1 and n_pool:
        return v / n_pool
    return v


def plot_accuracy_vs_budget(summary: list[dict], n_pool: int | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    for m in methods:
        pts = sorted(((_budget_x(s["budget"], n_pool), s["test_mean"], s["test_sd"]) for s in summary if s["method"] == m))
        if len(pts) == 1 and pts[0][0] >= 1.0:  # full data: a reference line
            ax.axhline(pts[0][1], ls="--", color="black", lw=1, label=f"{m} (all data)")
            continue
        x, y, e = zip(*pts)
        style = {"color": "gray", "ls": ":"} if m == "random" else {}
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m, **style)
    ax.set_xscale("log")
    ax.set_xlabel("budget (fraction of the pool, log scale)")
    ax.set_ylabel("test accuracy (mean over seeds, ±1 sd)")
    return _finish_accuracy_plot(fig, ax)


def _finish_accuracy_plot(fig, ax) -> str:
    import matplotlib.pyplot as plt

    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = _png_b64(fig)
    plt.close(fig)
    return out


def plot_quality_vs_cost(summary: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m in dict.fromkeys(s["method"] for s in summary):
        ss = [s for s in summary if s["method"] == m]
        ax.scatter([s["oracle_runs"] + s["proxy_calls"] / 100 for s in ss], [s["test_mean"] for s in ss], label=m, s=30)
    ax.set_xscale("log")
    ax.set_xlabel("oracle runs per selection (incl. the final one; + proxy calls / 100)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    return _finish_accuracy_plot(fig, ax)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.better td{background:#e6f4e6}tr.worse td{background:#f8e6e6}
.meta{color:#555;font-size:.9em}.plots img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.diag{display:flex;flex-wrap:wrap;gap:10px}.diag figure{margin:0;max-width:520px}.diag img{max-width:100%}
figcaption{font-size:.8em;color:#555}pre{background:#f7f7f7;padding:.5em;font-size:.75em;overflow-x:auto;max-height:18em}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def render(run_dir: str | os.PathLike) -> str:
    run_dir = Path(run_dir)
    rows = load_rows(run_dir)
    summary = summarise(rows)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    n_pool = None
    full = [r for r in rows if r["selector"] == "full"]
    if full:
        n_pool = full[0]["n_selected"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>thresher bench {_esc(cfg.get('name', run_dir.name))}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1 id='title'>thresher bench: {_esc(cfg.get('name', run_dir.name))}</h1>",
             f"<p class='meta'>model <b>{_esc(cfg.get('model', '?'))}</b>, train {_esc(cfg.get('train') or 'tier defaults')}, "
             f"budgets {_esc(cfg.get('budgets'))}, seeds {_esc(cfg.get('seeds'))}, oracle budget for search methods "
             f"{_esc(cfg.get('oracle_budget'))}; code commit <code>{_esc(cfg.get('commit', '?'))}</code>; "
             f"{_esc(cfg.get('machine', ''))}, Python {_esc(cfg.get('python', ''))}. Selection sees the dev split only; "
             f"every final selection is scored once on test.</p>",
             "<h2>Accuracy vs budget</h2><div class='plots'>",
             f"<img id='plot-accuracy' alt='accuracy vs budget' src='data:image/png;base64,{plot_accuracy_vs_budget(summary, n_pool)}'>",
             "</div><h2>Quality vs oracle cost</h2><div class='plots'>",
             f"<img id='plot-cost' alt='quality vs oracle cost' src='data:image/png;base64,{plot_quality_vs_cost(summary)}'>",
             "</div>"]

    parts.append("<h2>Summary</h2><p class='meta'>Mean over seeds. <i>vs random</i>: mean test-accuracy difference to "
                 "random at the same budget and seed, with a 95% paired bootstrap CI (seeds and test items resampled); "
                 "green / red rows: the CI excludes 0 (better / worse than random).</p>")
    parts.append("<table id='summary'><tr><th class='l'>method</th><th>budget</th><th>n</th><th>dev</th><th>test</th><th>sd</th>"
                 "<th>vs random</th><th>95% CI</th><th>oracle runs</th><th>proxy calls</th><th>wall s</th></tr>")
    for s in summary:
        cls = (" class='better'" if s["vs_random"] > 0 else " class='worse'") if s.get("significant") else ""
        vs = f"{s['vs_random']:+.3f}" if "vs_random" in s else ""
        ci = f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]" if "ci_low" in s else ""
        parts.append(f"<tr{cls}><td class='l'>{_esc(s['method'])}</td><td>{_esc(s['budget'])}</td><td>{s['n_selected']:.0f}</td>"
                     f"<td>{s['dev_mean']:.3f}</td><td>{s['test_mean']:.3f}</td><td>{s['test_sd']:.3f}</td><td>{vs}</td>"
                     f"<td>{ci}</td><td>{s['oracle_runs']:.1f}</td><td>{s['proxy_calls']:.1f}</td><td>{s['wall_s']:.0f}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Per-method diagnostics</h2>")
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = sorted([r for r in rows if r["method"] == method], key=lambda r: (r["seed"], float(r["budget"])))
        figs = []
        for r in rs:
            rid = f"{r['method']}__b{r['budget']}__s{r['seed']}".replace("/", "_")
            for name in (r.get("diagnostics") or {}).get("artifacts", []) or []:
                p = run_dir / "artifacts" / rid / name
                if p.suffix.lower() == ".png" and p.exists():
                    b64 = base64.b64encode(p.read_bytes()).decode()
                    figs.append(f"<figure><img class='diag-img' alt='{_esc(name)}' src='data:image/png;base64,{b64}'>"
                                f"<figcaption>{_esc(method)}, budget {_esc(r['budget'])}, seed {r['seed']}: {_esc(name)}</figcaption></figure>")
        diag = {k: v for k, v in (rs[0].get("diagnostics") or {}).items() if k != "artifacts"}
        text = json.dumps(diag, indent=1, default=str)
        if len(text) > 4000:
            text = text[:4000] + "\n..."
        parts.append(f"<h3 id='diag-{_esc(method)}'>{_esc(method)}</h3>")
        if figs:
            parts.append("<div class='diag'>" + "".join(figs[:6]) + "</div>")
        parts.append(f"<pre>{_esc(text)}</pre>")

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
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(render(run_dir))
    os.replace(tmp, out)
    return out


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, chromium: str | None = None) -> dict:
    """Render the report in headless Chromium (Playwright driving the system browser), save a
    full-page screenshot and return what rendered: image sizes and table row counts."""
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
            images: Array.from(document.images).map(i => ({id: i.id, cls: i.className, w: i.naturalWidth, h: i.naturalHeight})),
            summaryRows: document.querySelectorAll('#summary tr').length,
            rows: document.querySelectorAll('#rows tr').length,
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
