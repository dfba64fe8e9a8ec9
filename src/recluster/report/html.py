"""``report.html``: one self-contained page from a run's loaded outputs (pure, no I/O).

No external URL of any kind: styles, SVG charts and the map's small canvas script are inline,
fonts are the reader's system fonts, and a Content-Security-Policy forbids every fetch. Every
string that comes from data or config is escaped; data for the map script is JSON with ``<``,
``>`` and ``&`` escaped.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import yaml

from recluster.compute.paths import ROOT, NodePath, path_key
from recluster.report import facts
from recluster.report.data import RunData

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#7A5195",
           "#8C564B", "#3B8B3B", "#B8860B", "#5D6D7E", "#C0392B"]
NOISE = "#c4c4c4"
ROOT_COLOR = "#4a4a4a"
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:; base-uri 'none'; form-action 'none'")


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def anchor(path: str) -> str:
    return "c-" + "".join(ch if ch.isalnum() else "-" for ch in path)


# ---------------------------------------------------------------------------- colours


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(round(v)):02x}" for v in np.clip(rgb, 0, 255))


def _shade(color: str, t: float) -> str:
    """Towards white (t > 0) or black (t < 0) by |t|."""
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    target = 255.0 if t > 0 else 0.0
    return _hex(rgb + (target - rgb) * abs(t))


def _hsl_color(i: int) -> str:
    h = (i * 0.618034) % 1.0
    import colorsys
    r, g, b = colorsys.hls_to_rgb(h, 0.45, 0.6)
    return _hex(np.array([r, g, b]) * 255)


def colours(tree: list[dict[str, Any]]) -> dict[str, str]:
    """A colour per node: first-level clusters get distinct hues, their descendants shades of
    the same hue (so a sub-cluster's colour says where it comes from, in the map and the tree)."""
    by_path = {n["path"]: n for n in tree}
    out = {ROOT: ROOT_COLOR}

    def visit(path: str, amplitude: float) -> None:
        kids = by_path[path]["children"]
        for k, child in enumerate(kids):
            if path == ROOT:
                out[child] = PALETTE[k] if k < len(PALETTE) else _hsl_color(k)
            else:
                t = 0.0 if len(kids) == 1 else -amplitude + 2 * amplitude * k / (len(kids) - 1)
                out[child] = _shade(out[path], t)
            visit(child, amplitude if path == ROOT else amplitude / 2)

    visit(ROOT, 0.42)
    return out


# ---------------------------------------------------------------------------- formatting


def num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    v = float(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.2g}"


def pct(v: float, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f}%"


def swatch(color: str) -> str:
    return f'<span class="sw" style="background:{e(color)}"></span>'


# ---------------------------------------------------------------------------- charts (SVG)


def _label(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _top_features(rows: pd.DataFrame, n: int = 8) -> pd.DataFrame:
    """The ``n`` features that move the classifier most (those that move it at all)."""
    return rows[rows["mean_abs_shap"] > 0].sort_values("rank").head(n)


def shap_bars(rows: pd.DataFrame, color: str) -> str:
    """Horizontal bars of mean |SHAP| (how much a feature moves the model's score)."""
    rows = _top_features(rows)
    if rows.empty:
        return '<p class="muted">No feature moves this classifier.</p>'
    w, left, rh, top = 380, 130, 24, 8
    h = top + rh * len(rows) + 6
    vmax = float(rows["mean_abs_shap"].max())
    parts = [f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="feature importance">']
    for i, (_, r) in enumerate(rows.iterrows()):
        y = top + i * rh
        bw = max(1.0, (w - left - 56) * float(r["mean_abs_shap"]) / vmax)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" class="lab">'
                     f'<title>{e(r["feature"])}</title>{e(_label(str(r["feature"])))}</text>'
                     f'<rect x="{left}" y="{y + 4}" width="{bw:.1f}" height="{rh - 8}" rx="2" '
                     f'fill="{e(color)}"/>'
                     f'<text x="{left + bw + 5:.1f}" y="{y + 15}" class="val">'
                     f'{e(num(r["mean_abs_shap"]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def shap_direction(rows: pd.DataFrame, color: str) -> str:
    """Mean SHAP among members and among the rest, per feature: which way it pushes whom."""
    rows = _top_features(rows)
    if rows.empty:
        return ""
    w, left, rh, top = 380, 130, 24, 24
    h = top + rh * len(rows) + 6
    vals = np.concatenate([rows["mean_shap"].to_numpy(float), rows["mean_shap_rest"].to_numpy(float)])
    vmax = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
    vmax = vmax or 1.0
    mid = left + (w - left - 16) / 2
    half = (w - left - 24) / 2

    def x(v: float) -> float:
        return mid + half * (v / vmax if math.isfinite(v) else 0.0)

    parts = [f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="direction of feature effects">',
             f'<circle cx="{left + 4}" cy="9" r="5" fill="{e(color)}"/>'
             f'<text x="{left + 13}" y="13" class="val">members</text>'
             f'<circle cx="{left + 84}" cy="9" r="5" fill="#9a9a9a"/>'
             f'<text x="{left + 93}" y="13" class="val">everyone else</text>',
             f'<line x1="{mid:.1f}" x2="{mid:.1f}" y1="{top - 2}" y2="{h - 4}" class="axis"/>']
    for i, (_, r) in enumerate(rows.iterrows()):
        y = top + i * rh + 12
        xm, xr = x(float(r["mean_shap"])), x(float(r["mean_shap_rest"]))
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" class="lab">'
                     f'<title>{e(r["feature"])}</title>{e(_label(str(r["feature"])))}</text>'
                     f'<line x1="{min(xm, xr):.1f}" x2="{max(xm, xr):.1f}" y1="{y}" y2="{y}" '
                     f'class="link"/>'
                     f'<circle cx="{xr:.1f}" cy="{y}" r="5" fill="#9a9a9a"/>'
                     f'<circle cx="{xm:.1f}" cy="{y}" r="5.5" fill="{e(color)}"/>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------- sections


_LEVEL_STEPS = ("sample", "fit", "stability", "assign")


def _stage_order(name: str) -> tuple:
    """Stages in the order they run (the manifest stores them sorted by name)."""
    if name.startswith("level ") and name.split()[1].rstrip(":").isdigit():
        step = next((i for i, w in enumerate(_LEVEL_STEPS) if f": {w}" in name), 9)
        return (1, int(name.split()[1].rstrip(":")), step, name)
    first = {"plan": 0, "validate": 1}
    if name in first:
        return (0, first[name], 0, name)
    return (2, 0 if name.startswith("explain") else 1 if name == "write labels" else 2, 0, name)


def _overview(data: RunData, ov: dict[str, Any]) -> str:
    m = data.manifest
    timings = {k: v for k, v in sorted(m.get("timings_s", {}).items(),
                                        key=lambda kv: _stage_order(kv[0]))
               if isinstance(v, int | float)}
    levels = ov["clusters_per_level"]
    level_txt = " · ".join(f"{n} at level {lvl}" for lvl, n in levels.items()) or "none"
    explain_on = m.get("config", {}).get("explain", {}).get("enabled", False)
    cards = [("Rows", f"{ov['rows']:,}"),
             ("Clusters", level_txt),
             ("Final segments", f"{ov['leaves']:,}" if ov["split"] else "1 (not split)"),
             ("Unclustered rows", f"{pct(ov['noise_first'])} at level 1 · "
                                  f"{pct(ov['noise_total'])} in total"),
             ("Run time", f"{sum(timings.values()):,.0f} s"),
             ("Explanations", "on" if explain_on else "disabled")]
    cfg = yaml.safe_dump(m.get("config", {}), sort_keys=False, default_flow_style=False)
    stage_rows = "".join(f"<tr><td>{e(k)}</td><td class='n'>{v:,.1f} s</td></tr>"
                         for k, v in timings.items())
    return (
        '<section id="overview"><h2>Overview</h2><div class="cards">'
        + "".join(f'<div class="card"><div class="k">{e(k)}</div><div class="v">{e(v)}</div></div>'
                  for k, v in cards)
        + "</div>"
        + '<p class="muted">Unclustered rows are rows the clustering found no dense group for '
          '("noise"); they stay in the cluster above. Run time is the sum of the job\'s stages.</p>'
        + f"<details><summary>Time per stage</summary><table class='plain'>{stage_rows}</table>"
          "</details>"
        + "<details><summary>Configuration of this run (secrets redacted)</summary>"
          f"<pre>{e(cfg)}</pre></details></section>")


def _tree(tree: list[dict[str, Any]], cols: dict[str, str]) -> str:
    by_path = {n["path"]: n for n in tree}
    rows = []
    for n in sorted(tree, key=lambda n: path_key(n["path"])):
        p = n["path"]
        parent = by_path.get(n["parent"]) if n["parent"] else None
        of_parent = "" if not parent or not parent["size"] or parent["path"] == ROOT else \
            f"{pct(n['size'] / parent['size'])} of {e(parent['path'])}"
        name = "All rows" if p == ROOT else f"Cluster {e(p)}"
        link = name if p == ROOT else f'<a href="#{anchor(p)}">{name}</a>'
        auc = (n.get("classifier") or {}).get("auc")
        reason = n.get("stop_reason") or ""
        kids = f"{len(n['children'])} sub-clusters" if n["children"] else \
            f'<span class="muted" title="{e(reason)}">final: {e(facts.short_stop(reason))}</span>'
        rows.append(
            f'<tr data-cluster="{e(p)}"><td class="name" '
            f'style="padding-left:{8 + 22 * n["depth"]}px">'
            f'{swatch(cols.get(p, NOISE))}{link}</td>'
            f'<td class="n">{n["size"]:,}</td>'
            f'<td class="barcell"><div class="bar" style="width:{100 * n["share"]:.2f}%;'
            f'background:{e(cols.get(p, NOISE))}"></div></td>'
            f'<td class="n">{pct(n["share"])}</td><td class="muted">{of_parent}</td>'
            f'<td class="n">{"–" if auc is None else f"{auc:.3f}"}</td><td>{kids}</td></tr>')
    return ('<section id="tree"><h2>The cluster tree</h2>'
            '<p class="muted">Each cluster was split again where it had structure of its own. '
            'Bars show the share of all rows. AUC: how well a classifier tells members from the '
            'rest of the parent (1.0 = perfectly, 0.5 = not at all).</p>'
            '<table class="tree"><thead><tr><th>Cluster</th><th class="n">Rows</th><th>Share of all'
            ' rows</th><th class="n"></th><th>Share of parent</th><th class="n">AUC</th><th>Inside'
            '</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></section>")


def _canvas_payload(frame: pd.DataFrame, key: str, cols: dict[str, str],
                    noise_labels: set[str], greedy: bool = True) -> dict[str, Any]:
    """Quantised coordinates (0..1000, equal scale on both axes), a colour code per point, and
    the label positions (medians) of the clusters shown; noise is drawn first, in grey."""
    x, y = frame["x"].to_numpy(float), frame["y"].to_numpy(float)
    span = max(np.ptp(x), np.ptp(y)) or 1.0
    qx = np.round((x - (x.min() + x.max()) / 2) / span * 1000 + 500).astype(int)
    qy = 1000 - np.round((y - (y.min() + y.max()) / 2) / span * 1000 + 500).astype(int)
    labels = sorted(frame[key].unique(), key=path_key)
    codes = frame[key].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    noise = [lab in noise_labels for lab in labels]
    sizes = np.bincount(codes, minlength=len(labels))
    centres = [[lab, int(np.median(qx[codes == i])), int(np.median(qy[codes == i]))]
               for i, lab in sorted(enumerate(labels), key=lambda il: -sizes[il[0]])
               if not noise[i]]  # biggest first: they keep their label when two overlap
    return {"x": qx.tolist(), "y": qy.tolist(), "c": codes.tolist(),
            "colors": [NOISE if noise[i] else cols.get(lab, NOISE) for i, lab in enumerate(labels)],
            "noise": noise, "labels": centres if len(centres) <= 40 else [], "greedy": greedy}


def _child_of(node: str, leaf: str) -> str:
    """The child of ``node`` a leaf path lies in (``node`` itself for its noise)."""
    inner, below = NodePath.parse(node), NodePath.parse(leaf)
    return leaf if below == inner else str(below.ancestor(inner.depth + 1))


def _safe_json(obj: Any) -> str:
    return (json.dumps(obj, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


MAP_JS = """
(function () {
  var maps = JSON.parse(document.getElementById('map-data').textContent);
  function draw(c) {
    var d = maps[c.id];
    var r = window.devicePixelRatio || 1, w = c.clientWidth, h = c.clientHeight;
    c.width = w * r; c.height = h * r;
    var g = c.getContext('2d'); g.scale(r, r);
    var pad = 14, s = Math.min(w, h) - 2 * pad, ox = (w - s) / 2, oy = (h - s) / 2;
    var dot = w > 300 ? 2.6 : 2.2;
    for (var pass = 0; pass < 2; pass++) {
      g.globalAlpha = pass === 0 ? 0.45 : 0.75;
      for (var i = 0; i < d.c.length; i++) {
        if (d.noise[d.c[i]] !== (pass === 0)) continue;
        g.fillStyle = d.colors[d.c[i]];
        g.fillRect(ox + d.x[i] * s / 1000 - dot / 2, oy + d.y[i] * s / 1000 - dot / 2, dot, dot);
      }
    }
    g.globalAlpha = 1; g.font = '600 12px system-ui, sans-serif';
    g.textAlign = 'center'; g.textBaseline = 'middle'; g.lineJoin = 'round';
    var placed = [], clash = false;
    d.labels.forEach(function (t) {
      var x = ox + t[1] * s / 1000, y = oy + t[2] * s / 1000;
      var w2 = g.measureText(t[0]).width / 2 + 6;
      placed.forEach(function (q) {
        if (Math.abs(q[0] - x) < q[2] + w2 && Math.abs(q[1] - y) < 16) clash = true;
      });
      placed.push([x, y, w2]);
    });
    // Overlapping labels: on a zoomed map the smaller cluster's is left out; on the overall map
    // (sub-clusters on one blob) all are, since one label would seem to name the whole blob.
    placed.forEach(function (q, i) {
      var t = d.labels[i], x = q[0], y = q[1];
      if (clash && !d.greedy) return;
      for (var j = 0; j < i; j++) {
        var p = placed[j];
        if (p[3] && Math.abs(p[0] - x) < p[2] + q[2] && Math.abs(p[1] - y) < 16) return;
      }
      q[3] = true;
      g.lineWidth = 4; g.strokeStyle = 'rgba(255,255,255,0.9)'; g.strokeText(t[0], x, y);
      g.fillStyle = '#111'; g.fillText(t[0], x, y);
    });
    c.setAttribute('data-drawn', String(d.c.length));
  }
  Array.prototype.forEach.call(document.querySelectorAll('canvas[data-map]'), draw);
})();
"""


def _legend(frame: pd.DataFrame, key: str, cols: dict[str, str], noise_labels: set[str]) -> str:
    items = []
    for lab in sorted(frame[key].unique(), key=path_key):
        is_noise = lab in noise_labels
        name = ("unclustered" if lab == ROOT else f"{e(lab)} unclustered") if is_noise else e(lab)
        items.append(f'<span class="li">{swatch(NOISE if is_noise else cols.get(lab, NOISE))}'
                     f"{name}</span>")
    return f'<div class="legend">{"".join(items)}</div>'


def _map(data: RunData, cols: dict[str, str]) -> str:
    head = '<section id="map"><h2>The map</h2>'
    frames = {} if data.map is None else dict(tuple(data.map.groupby("node", sort=False)))
    if ROOT not in frames:
        return head + ('<p class="muted">No map: the root node was not embedded (its sample was '
                       'too small).</p></section>')
    split = {n["path"] for n in data.tree if n["children"]}
    frame = frames[ROOT]
    cfg = data.manifest.get("config", {})
    k = cfg.get("embedding", {}).get("n_components", 2)
    rows = data.manifest.get("rows", {}).get("in") or 0
    root = next(n for n in data.tree if n["path"] == ROOT)
    n_sample = (root.get("fit") or {}).get("n_sample") or len(frame)
    note = (f"Each dot is one row; rows close together are similar. Shown: a random sample of "
            f"{len(frame):,} of the {rows:,} rows ({pct(len(frame) / rows) if rows else '?'})"
            + (f"; the map was fitted on {n_sample:,} sampled rows" if n_sample != len(frame)
               else "") + ". Grey dots belong to no cluster.")
    if k > 2:
        note += (f" The embedding has {k} dimensions; the maps show the first two, so clusters "
                 "that are apart in the others may overlap here.")
    # A row left in a split node (its cluster path has children) is noise of that split.
    payload = {"map-first": _canvas_payload(frame, "first", cols, {ROOT}),
               "map-leaf": _canvas_payload(frame, "leaf", cols, split, greedy=False)}
    zooms = []
    for node in sorted((p for p in frames if p != ROOT), key=path_key):
        z = frames[node].assign(child=[_child_of(node, lf) for lf in frames[node]["leaf"]])
        cid = "map-" + anchor(node)
        payload[cid] = _canvas_payload(z, "child", cols, {node})
        zooms.append(f'<figure class="zoom"><figcaption>{swatch(cols.get(node, NOISE))}Inside '
                     f'cluster {e(node)} ({len(z):,} rows)</figcaption><canvas id="{e(cid)}" '
                     f'data-map="{e(node)}" width="230" height="230"></canvas></figure>')
    zoom_html = ""
    if zooms:
        zoom_html = ('<h3 class="sub">Zoomed in</h3><p class="muted">Each split cluster was mapped '
                     'again on its own rows; that is where its sub-clusters were found (on the '
                     'overall map they may sit close together).</p>'
                     f'<div class="zooms">{"".join(zooms)}</div>')
    return (head + f'<p class="muted">{e(note)}</p><div class="maps">'
            '<figure><figcaption>Coloured by first-level cluster</figcaption>'
            '<canvas id="map-first" data-map="root" width="460" height="460"></canvas>'
            f'{_legend(frame, "first", cols, {ROOT})}</figure>'
            '<figure><figcaption>Coloured by final segment</figcaption>'
            '<canvas id="map-leaf" data-map="root" width="460" height="460"></canvas>'
            f'{_legend(frame, "leaf", cols, split)}</figure></div>{zoom_html}'
            f'<script type="application/json" id="map-data">{_safe_json(payload)}</script>'
            f"<script>{MAP_JS}</script></section>")


def _profile_table(rows: list[dict[str, Any]], parent: str | None) -> str:
    if not rows:
        return ""
    rest = "Rest of population" if parent in (None, ROOT) else f"Rest of cluster {parent}"
    body = []
    for r in rows:
        if r["kind"] == "numeric":
            d = r["effect"]
            arrow = "" if d is None or not math.isfinite(d) else ("▲" if d > 0 else "▼")
            body.append(f"<tr><td>{e(r['feature'])}</td><td class='n'>{num(r['member'])}</td>"
                        f"<td class='n muted'>{num(r['q25'])} – {num(r['q75'])}</td>"
                        f"<td class='n'>{num(r['rest'])}</td><td class='n'>{num(r['population'])}"
                        f"</td><td class='n'>{arrow} {num(d)} sd</td></tr>")
        else:
            lift = r["lift"]
            arrow = "" if lift is None or not math.isfinite(lift) else ("▲" if lift > 1 else "▼")
            pop = "–" if r["population"] is None else pct(r["population"])
            body.append(f"<tr><td>{e(r['feature'])} = {e(r['level'])}</td>"
                        f"<td class='n'>{pct(r['member'])}</td><td class='n muted'></td>"
                        f"<td class='n'>{pct(r['rest'])}</td><td class='n'>{pop}</td>"
                        f"<td class='n'>{arrow} ×{num(lift)}</td></tr>")
    return ("<table class='profile'><thead><tr><th>Feature</th><th class='n'>Members</th>"
            "<th class='n'>Members' middle half</th>"
            f"<th class='n'>{e(rest)}</th><th class='n'>Population</th><th class='n'>Difference"
            "</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
            "<p class='muted small'>Numbers: means (share of rows for a category). Difference: "
            "in standard deviations (sd) for numbers, as a ratio of shares for categories. "
            "Estimated on the training sample.</p>")


def _cluster(n: dict[str, Any], data: RunData, cols: dict[str, str], pop: dict[tuple, float],
             explain_on: bool) -> str:
    p = n["path"]
    parent = n["parent"]
    by_path = {m["path"]: m for m in data.tree}
    color = cols.get(p, NOISE)
    shap = prof = None
    if data.shap is not None:
        shap = data.shap[data.shap["cluster"] == p]
    if data.profiles is not None:
        prof = data.profiles[data.profiles["cluster"] == p]
    found = facts.findings(shap, prof)
    tag = facts.headline(found)
    bits = [f"{n['size']:,} rows", f"{pct(n['share'])} of all rows"]
    if parent not in (None, ROOT):
        bits.append(f"{pct(n['size'] / max(1, by_path[parent]['size']))} of cluster {parent}")
    q = n.get("classifier") or {}
    if q.get("auc") is not None:
        bits.append(f"classifier AUC {q['auc']:.3f}")
    if n.get("stability") is not None:
        bits.append(f"stability {n['stability']:.2f}")
    bits.append(f"{len(n['children'])} sub-clusters" if n["children"] else "final segment")
    if not explain_on:
        body = ('<p class="muted">Explanations disabled for this run (explain.enabled: false): '
                'no classifier, SHAP or profile.</p>')
        lead = ""
    else:
        lead = f'<p class="lead">{e(facts.sentence(p, parent, found))}</p>'
        body = ""
        if q.get("model") is None and q.get("skip_reason"):
            body += f'<p class="muted">No classifier for this cluster: {e(q["skip_reason"])}.</p>'
        if shap is not None and not shap.empty:
            body += ('<div class="charts"><figure><figcaption>What identifies members (mean '
                     f'|SHAP|)</figcaption>{shap_bars(shap, color)}</figure>'
                     '<figure><figcaption>Which way it pushes (mean SHAP)</figcaption>'
                     f'{shap_direction(shap, color)}</figure></div>')
        body += _profile_table(facts.profile_rows(shap, prof, pop), parent)
    return (f'<section class="cluster" id="{anchor(p)}" data-cluster="{e(p)}" '
            f'style="border-left-color:{e(color)}"><h3>{swatch(color)}Cluster {e(p)}'
            + (f' <span class="tag">{e(tag)}</span>' if tag else "") + "</h3>"
            f'{lead}<p class="facts">{" · ".join(e(b) for b in bits)}</p>{body}</section>')


CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", Arial,
  sans-serif; margin: 0; background: #f6f7f9; color: #1d232b; line-height: 1.45; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 28px; margin: 8px 0 4px; } h2 { font-size: 21px; margin: 34px 0 8px; }
h3 { font-size: 18px; margin: 0 0 6px; display: flex; align-items: center; gap: 8px;
  flex-wrap: wrap; }
section { background: #fff; border-radius: 10px; padding: 6px 22px 16px; margin-top: 18px;
  box-shadow: 0 1px 3px rgba(0,0,0,.08); }
section.cluster { border-left: 6px solid #888; padding-top: 14px; }
.muted { color: #5d6673; } .small { font-size: 12px; }
.sw { display: inline-block; width: 12px; height: 12px; border-radius: 3px; margin-right: 7px;
  vertical-align: -1px; flex: none; }
.cards { display: grid; grid-template-columns: repeat(3, 1fr); gap: 10px; margin: 10px 0; }
.card { background: #f1f3f6; border-radius: 8px; padding: 10px 12px; }
.card .k { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #5d6673; }
.card .v { font-size: 17px; font-weight: 600; margin-top: 2px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th { text-align: left; font-weight: 600; color: #5d6673; font-size: 12px;
  border-bottom: 1px solid #dfe3e8; padding: 6px 8px; }
td { padding: 5px 8px; border-bottom: 1px solid #eef0f3; vertical-align: middle; }
td.n, th.n { text-align: right; white-space: nowrap; }
table.plain { width: auto; }
.barcell { width: 180px; } .bar { height: 12px; border-radius: 3px; min-width: 2px; }
.tree td.name, .tree td.muted { white-space: nowrap; }
.tree a { color: inherit; text-decoration: none; font-weight: 600; }
.tree a:hover { text-decoration: underline; }
.maps { display: flex; gap: 18px; flex-wrap: wrap; }
figure { margin: 8px 0; } figcaption { font-size: 13px; font-weight: 600; color: #3b434d;
  margin-bottom: 4px; }
.zooms { display: flex; gap: 14px; flex-wrap: wrap; }
figure.zoom canvas { width: 230px; height: 230px; }
h3.sub { font-size: 16px; margin: 18px 0 2px; }
canvas { width: 460px; height: 460px; background: #fbfbfc; border: 1px solid #e3e6ea;
  border-radius: 8px; display: block; }
.legend { max-width: 460px; font-size: 12px; margin-top: 6px; }
.legend .li { display: inline-block; margin: 2px 10px 2px 0; white-space: nowrap; }
.lead { font-size: 16px; margin: 4px 0 6px; }
.facts { color: #3b434d; font-size: 14px; margin: 0 0 8px; }
.tag { font-size: 13px; font-weight: 500; background: #eef1f5; border-radius: 12px;
  padding: 2px 10px; color: #3b434d; }
.charts { display: flex; gap: 24px; flex-wrap: wrap; }
svg.chart text.lab { font-size: 12px; fill: #2a3139; } svg.chart text.val { font-size: 11px;
  fill: #5d6673; } svg.chart .axis { stroke: #b9c0c8; } svg.chart .link { stroke: #c9ced4;
  stroke-width: 2; }
pre { background: #f1f3f6; padding: 10px; border-radius: 6px; font-size: 12px; overflow: auto; }
details { margin: 8px 0; } summary { cursor: pointer; color: #2a5db0; }
"""


def render(data: RunData) -> str:
    """The whole page as one HTML string."""
    tree = sorted(data.tree, key=lambda n: path_key(n["path"]))
    cols = colours(tree)
    ov = facts.overview(tree)
    cfg = data.manifest.get("config", {})
    explain_on = bool(cfg.get("explain", {}).get("enabled", False))
    pop = facts.population(tree, data.profiles)
    clusters = [n for n in tree if n["path"] != ROOT]
    if clusters:
        cluster_html = "".join(_cluster(n, data, cols, pop, explain_on) for n in clusters)
    else:
        root = tree[0]
        cluster_html = (f'<section class="cluster" data-cluster="{ROOT}"><h3>One cluster</h3>'
                        '<p class="lead">The whole table is one cluster: no sub-structure was '
                        f'kept ({e(root.get("stop_reason") or "not split")}).</p></section>')
    source = f"{cfg.get('input', {}).get('path', '')} → {cfg.get('output', {}).get('path', '')}"
    intro = ("This page describes how the rows of one table fall into groups (clusters) of "
             "similar rows, and what sets each group apart. Groups were found on a map of the "
             "data and then split again where they had structure of their own.")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Segmentation report: {e(cfg.get('output', {}).get('path', ''))}</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"<h1>Segmentation report</h1><p class='muted'>{e(source)}</p><p>{e(intro)}</p>"
        f"{_overview(data, ov)}{_map(data, cols)}{_tree(tree, cols)}"
        f'<h2>The clusters</h2>{cluster_html}'
        '<p class="muted small">Generated by recluster from the run\'s outputs (tree.json, '
        'shap_summary.parquet, profiles.parquet, report/map.parquet, manifest.json).</p>'
        "</main></body></html>")
