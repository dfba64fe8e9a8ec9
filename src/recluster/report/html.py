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

from recluster.compute import temporal
from recluster.compute.paths import ROOT, NodePath, path_key
from recluster.compute.segments import number, stop_words
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


def _ticks(vmax: float, n: int = 3) -> list[float]:
    """``n`` round tick values from 0 to about ``vmax``."""
    if not vmax > 0 or not math.isfinite(vmax):
        return [0.0]
    raw = vmax / (n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(vmax / step) + 1)]


def shap_bars(rows: pd.DataFrame, color: str) -> str:
    """Horizontal bars of mean |SHAP| (how much a feature moves the model's score), with an
    x axis in log-odds."""
    rows = _top_features(rows)
    if rows.empty:
        return '<p class="muted">No feature moves this classifier.</p>'
    w, left, rh, top, right = 400, 130, 24, 8, 56
    plot_h = rh * len(rows)
    h = top + plot_h + 44
    vmax = float(rows["mean_abs_shap"].max()) or 1.0
    ticks = _ticks(vmax)
    scale = max(vmax, ticks[-1])
    span = w - left - right

    def x(v: float) -> float:
        return left + span * v / scale

    parts = [f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="feature importance: mean absolute SHAP value per feature">']
    base = top + plot_h + 2
    parts.append(f'<line x1="{left}" x2="{left + span}" y1="{base}" y2="{base}" class="axis"/>')
    for t in ticks:
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{base}" y2="{base + 4}" '
                     f'class="axis"/><text x="{x(t):.1f}" y="{base + 15}" text-anchor="middle" '
                     f'class="val">{e(number(t))}</text>')
    parts.append(f'<text x="{left + span / 2:.1f}" y="{base + 32}" text-anchor="middle" '
                 'class="axlab">mean |SHAP| per row (log-odds of membership)</text>')
    for i, (_, r) in enumerate(rows.iterrows()):
        y = top + i * rh
        bw = max(1.0, x(float(r["mean_abs_shap"])) - left)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" class="lab">'
                     f'<title>{e(r["feature"])}</title>{e(_label(str(r["feature"])))}</text>'
                     f'<rect x="{left}" y="{y + 4}" width="{bw:.1f}" height="{rh - 8}" rx="2" '
                     f'fill="{e(color)}"/>'
                     f'<text x="{left + bw + 5:.1f}" y="{y + 15}" class="val">'
                     f'{e(number(r["mean_abs_shap"]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def shap_direction(rows: pd.DataFrame, color: str) -> str:
    """Mean SHAP among members and among the rest, per feature: which way it pushes whom, on
    an x axis in log-odds (right of 0: towards membership)."""
    rows = _top_features(rows)
    if rows.empty:
        return ""
    w, left, rh, top = 400, 130, 24, 24
    plot_h = rh * len(rows)
    h = top + plot_h + 44
    vals = np.concatenate([rows["mean_shap"].to_numpy(float), rows["mean_shap_rest"].to_numpy(float)])
    vmax = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
    vmax = vmax or 1.0
    tick = _ticks(vmax)[-1]
    mid = left + (w - left - 16) / 2
    half = (w - left - 24) / 2

    def x(v: float) -> float:
        return mid + half * (v / vmax if math.isfinite(v) else 0.0)

    base = top + plot_h + 2
    parts = [f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="direction of feature effects: mean SHAP among members and the rest">',
             f'<circle cx="{left + 4}" cy="9" r="5" fill="{e(color)}"/>'
             f'<text x="{left + 13}" y="13" class="val">members</text>'
             f'<circle cx="{left + 84}" cy="9" r="5" fill="#9a9a9a"/>'
             f'<text x="{left + 93}" y="13" class="val">everyone else</text>',
             f'<line x1="{mid:.1f}" x2="{mid:.1f}" y1="{top - 2}" y2="{base}" class="axis"/>',
             f'<line x1="{x(-vmax):.1f}" x2="{x(vmax):.1f}" y1="{base}" y2="{base}" class="axis"/>']
    for t in sorted({-tick, 0.0, tick}):
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{base}" y2="{base + 4}" '
                     f'class="axis"/><text x="{x(t):.1f}" y="{base + 15}" text-anchor="middle" '
                     f'class="val">{e(("+" if t > 0 else "") + number(t))}</text>')
    parts.append(f'<text x="{mid:.1f}" y="{base + 32}" text-anchor="middle" class="axlab">'
                 'mean SHAP (log-odds); above 0: towards membership</text>')
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


def _names(data: RunData) -> dict[str, str]:
    """Segment path -> name (``segments.parquet``; runs without one: the paths)."""
    names = data.names()
    return {n["path"]: names.get(n["path"]) or ("All rows" if n["path"] == ROOT
                                                else f"Segment {n['path']}") for n in data.tree}


def _tree(tree: list[dict[str, Any]], cols: dict[str, str], names: dict[str, str]) -> str:
    by_path = {n["path"]: n for n in tree}
    rows = []
    for n in sorted(tree, key=lambda n: path_key(n["path"])):
        p = n["path"]
        parent = by_path.get(n["parent"]) if n["parent"] else None
        of_parent = "" if not parent or not parent["size"] or parent["path"] == ROOT else \
            f"{pct(n['size'] / parent['size'])} of {e(parent['path'])}"
        label = f'<span class="path">{e(p)}</span> {e(names[p])}' if p != ROOT else "All rows"
        link = label if p == ROOT else f'<a href="#{anchor(p)}">{label}</a>'
        auc = (n.get("classifier") or {}).get("auc")
        stab = n.get("stability")
        reason = n.get("stop_reason") or ""
        kids = f"{len(n['children'])} sub-segments" if n["children"] else \
            f'<span class="muted" title="{e(reason)}">final: {e(stop_words(reason))}</span>'
        rows.append(
            f'<tr data-cluster="{e(p)}"><td class="name" '
            f'style="padding-left:{8 + 22 * n["depth"]}px">'
            f'{swatch(cols.get(p, NOISE))}{link}</td>'
            f'<td class="n">{n["size"]:,}</td>'
            f'<td class="barcell"><div class="bar" style="width:{100 * n["share"]:.2f}%;'
            f'background:{e(cols.get(p, NOISE))}"></div></td>'
            f'<td class="n">{pct(n["share"])}</td><td class="muted">{of_parent}</td>'
            f'<td class="n">{"–" if auc is None else f"{auc:.3f}"}</td>'
            f'<td class="n">{"–" if stab is None else f"{stab:.2f}"}</td><td>{kids}</td></tr>')
    return ('<section id="tree"><h2>The segment tree</h2>'
            '<p class="muted">Each segment was split again where it had structure of its own. '
            'Bars show the share of all rows. AUC: how well the columns tell members from the '
            'rest of the parent (1.0 = perfectly, 0.5 = not at all). Stability: how reliably '
            'the segment reappears when the clustering is redone on subsamples (1.0 = always; '
            'below 0.75 = unstable). See the <a href="#glossary">glossary</a>.</p>'
            '<table class="tree"><thead><tr><th>Segment</th><th class="n">Rows</th><th>Share of '
            'all rows</th><th class="n"></th><th>Share of parent</th><th class="n">AUC</th>'
            '<th class="n">Stability</th><th>Inside</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></section>")


def _child_of(node: str, leaf: str) -> str:
    """The child of ``node`` a leaf path lies in (``node`` itself for its noise)."""
    inner, below = NodePath.parse(node), NodePath.parse(leaf)
    return leaf if below == inner else str(below.ancestor(inner.depth + 1))


def _safe_json(obj: Any) -> str:
    return (json.dumps(obj, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _node_payload(frame: pd.DataFrame, node: str) -> dict[str, Any]:
    """One node's map: coordinates quantised to 0..1000 (equal scale on both axes), each
    point's child of ``node`` (``c``) and final segment (``l``) as indices into ``kids`` and
    ``leaves``, and where each group's label goes (its median point; biggest first)."""
    x, y = frame["x"].to_numpy(float), frame["y"].to_numpy(float)
    span = max(np.ptp(x), np.ptp(y)) or 1.0
    qx = np.round((x - (x.min() + x.max()) / 2) / span * 1000 + 500).astype(int)
    qy = 1000 - np.round((y - (y.min() + y.max()) / 2) / span * 1000 + 500).astype(int)
    out: dict[str, Any] = {"x": qx.tolist(), "y": qy.tolist()}
    child = pd.Series([_child_of(node, lf) for lf in frame["leaf"]], index=frame.index)
    for key, values in (("kids", child), ("leaves", frame["leaf"])):
        labels = sorted(values.unique(), key=path_key)
        codes = values.map({lab: i for i, lab in enumerate(labels)}).to_numpy()
        sizes = np.bincount(codes, minlength=len(labels))
        pos = [[int(i), int(np.median(qx[codes == i])), int(np.median(qy[codes == i]))]
               for i in sorted(range(len(labels)), key=lambda i: -sizes[i])]
        out[key] = labels
        out["c" if key == "kids" else "l"] = codes.tolist()
        out[key[0] + "pos"] = pos
    return out


MAP_JS = r"""
(function () {
  var D = JSON.parse(document.getElementById('map-data').textContent);
  var cv = document.getElementById('map-main'), tip = document.getElementById('map-tip');
  var crumbs = document.getElementById('map-crumbs'), byLeaf = document.getElementById('map-by-leaf');
  var note = document.getElementById('map-note');
  var S = {node: 'root', hover: -1, px: null, py: null, grid: null, keys: null, codes: null};
  var CELL = 10;
  function seg(p) { return D.seg[p] || {name: p, rows: 0, share: 0, color: D.noise, facts: []}; }
  function isNoise(p) { return p === S.node || (byLeaf.checked && seg(p).split); }
  function colour(p) { return isNoise(p) ? D.noise : seg(p).color; }
  function esc(t) {
    return String(t).replace(/[&<>"]/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]; });
  }
  function draw() {
    var d = D.maps[S.node], r = window.devicePixelRatio || 1;
    var w = cv.clientWidth, h = cv.clientHeight;
    cv.width = w * r; cv.height = h * r;
    var g = cv.getContext('2d'); g.setTransform(r, 0, 0, r, 0, 0);
    var pad = 18, s = Math.min(w, h) - 2 * pad, ox = (w - s) / 2, oy = (h - s) / 2;
    var leaf = byLeaf.checked;
    S.keys = leaf ? d.leaves : d.kids; S.codes = leaf ? d.l : d.c;
    var n = d.x.length, dot = n > 8000 ? 2 : 3, grid = {};
    S.px = new Float32Array(n); S.py = new Float32Array(n);
    // Dense maps are drawn translucent so that density shows; the hovered group stays opaque.
    var alpha = Math.max(0.25, Math.min(0.8, 3000 / n));
    for (var pass = 0; pass < 3; pass++) {
      for (var i = 0; i < n; i++) {
        var k = S.codes[i], p = S.keys[k], noise = isNoise(p);
        var hov = S.hover >= 0 && k === S.hover;
        if ((noise ? 0 : hov ? 2 : 1) !== pass) continue;  // noise below, the hovered on top
        var X = ox + d.x[i] * s / 1000, Y = oy + d.y[i] * s / 1000;
        S.px[i] = X; S.py[i] = Y;
        g.globalAlpha = hov ? 0.95 : (S.hover >= 0 ? 0.12 : (noise ? 0.35 : alpha));
        g.fillStyle = colour(p);
        g.fillRect(X - dot / 2, Y - dot / 2, dot, dot);
        var cell = Math.floor(X / CELL) + ',' + Math.floor(Y / CELL);
        (grid[cell] = grid[cell] || []).push(i);
      }
    }
    S.grid = grid;
    // Labels: biggest group first; a label that would overlap one already placed is left out.
    g.globalAlpha = 1; g.font = '600 12px system-ui, sans-serif';
    g.textAlign = 'center'; g.textBaseline = 'middle'; g.lineJoin = 'round';
    var placed = [], pos = leaf ? d.lpos : d.kpos;
    pos.forEach(function (t) {
      var p = S.keys[t[0]];
      if (isNoise(p)) return;
      var text = p + ' ' + (seg(p).short || ''), hw = g.measureText(text).width / 2 + 4, hh = 9;
      // Kept inside the canvas; moved up or down a line if it would cover a placed label.
      var x = Math.min(w - hw - 2, Math.max(hw + 2, ox + t[1] * s / 1000));
      var y0 = Math.min(h - hh - 2, Math.max(hh + 2, oy + t[2] * s / 1000)), box = null;
      [0, -20, 20, -40, 40].some(function (dy) {
        var y = y0 + dy, b = [x - hw, y - hh, x + hw, y + hh];
        if (b[1] < 0 || b[3] > h) return false;
        for (var j = 0; j < placed.length; j++) {
          var q = placed[j];
          if (b[0] < q[2] && q[0] < b[2] && b[1] < q[3] && q[1] < b[3]) return false;
        }
        box = b; return true;
      });
      if (!box) return;
      var y = (box[1] + box[3]) / 2;
      placed.push(box);
      g.lineWidth = 4; g.strokeStyle = 'rgba(255,255,255,0.92)'; g.strokeText(text, x, y);
      g.fillStyle = '#111'; g.fillText(text, x, y);
    });
    cv.dataset.node = S.node; cv.dataset.drawn = String(n);
    cv.dataset.labels = JSON.stringify(placed.map(function (b) {
      return b.map(function (v) { return Math.round(v * 10) / 10; }); }));
    var here = seg(S.node);
    note.textContent = (S.node === 'root' ? 'All rows' : S.node + ' ' + here.name) + ': ' +
      n.toLocaleString() + ' sampled rows shown' + (S.node === 'root' ? '' :
      ', on this segment\u2019s own map (where its sub-segments were found)') + '.';
    crumbs.innerHTML = '';
    var parts = S.node.split('.').slice(1);  // root.2.1 -> 2, 1
    var chain = ['root'];
    for (var m = 1; m <= parts.length; m++) chain.push(['root'].concat(parts.slice(0, m)).join('.'));
    chain.forEach(function (p, idx) {
      if (idx) crumbs.appendChild(document.createTextNode(' \u203a '));
      var b = document.createElement('button');
      b.type = 'button'; b.textContent = p === 'root' ? 'All rows' : p + ' ' + seg(p).name;
      b.dataset.node = p; b.disabled = p === S.node;
      b.onclick = function () { go(p); };
      crumbs.appendChild(b);
    });
  }
  function go(p) { if (D.maps[p]) { S.node = p; S.hover = -1; tip.hidden = true; draw(); } }
  function nearest(X, Y) {
    var best = -1, bd = 64, cx = Math.floor(X / CELL), cy = Math.floor(Y / CELL);
    for (var a = cx - 1; a <= cx + 1; a++) for (var b = cy - 1; b <= cy + 1; b++) {
      (S.grid[a + ',' + b] || []).forEach(function (i) {
        var dx = S.px[i] - X, dy = S.py[i] - Y, dd = dx * dx + dy * dy;
        if (dd < bd) { bd = dd; best = i; }
      });
    }
    return best;
  }
  function where(ev) { var b = cv.getBoundingClientRect(); return [ev.clientX - b.left, ev.clientY - b.top]; }
  cv.addEventListener('mousemove', function (ev) {
    var xy = where(ev), i = nearest(xy[0], xy[1]);
    var k = i < 0 ? -1 : S.codes[i], p = k < 0 ? null : S.keys[k];
    if (p !== null && isNoise(p)) { k = -1; p = null; }
    if (k !== S.hover) { S.hover = k; draw(); }
    if (p === null) { tip.hidden = true; cv.style.cursor = 'default'; return; }
    var q = seg(p), drill = !!D.maps[p] && p !== S.node;
    tip.innerHTML = '<b>' + esc(p + ' ' + q.name) + '</b><br>' + esc(q.rows.toLocaleString()) +
      ' rows (' + esc((100 * q.share).toFixed(1)) + '% of all)' +
      (q.facts.length ? '<ul>' + q.facts.map(function (f) { return '<li>' + esc(f) + '</li>'; }).join('') + '</ul>' : '') +
      '<i>' + esc(drill ? 'Click to open its sub-segments' : (q.stop ? 'Final segment: ' + q.stop : 'Final segment') + ' (click for details)') + '</i>';
    tip.dataset.path = p; tip.hidden = false;
    var b = cv.getBoundingClientRect(), host = cv.parentNode.getBoundingClientRect();
    var left = b.left - host.left + xy[0] + 14, top = b.top - host.top + xy[1] + 14;
    if (left + tip.offsetWidth > host.width) left = Math.max(0, left - tip.offsetWidth - 28);
    if (top + tip.offsetHeight > host.height) top = Math.max(0, top - tip.offsetHeight - 28);
    tip.style.left = left + 'px'; tip.style.top = top + 'px';
    cv.style.cursor = 'pointer';
  });
  cv.addEventListener('mouseleave', function () { tip.hidden = true; if (S.hover >= 0) { S.hover = -1; draw(); } });
  cv.addEventListener('click', function (ev) {
    var xy = where(ev), i = nearest(xy[0], xy[1]);
    if (i < 0) return;
    var p = S.keys[S.codes[i]];
    if (isNoise(p)) return;
    if (D.maps[p] && p !== S.node) go(p);
    else { var t = document.getElementById(seg(p).anchor); if (t) t.scrollIntoView(); }
  });
  byLeaf.addEventListener('change', function () { S.hover = -1; draw(); });
  // For tests and readers' scripts: a point of segment p on the current map, in page pixels.
  window.reclusterMap = {
    node: function () { return S.node; },
    go: go,
    pointOf: function (p) {
      for (var i = 0; i < S.codes.length; i++) {
        if (S.keys[S.codes[i]] === p) {
          var b = cv.getBoundingClientRect();
          return [b.left + S.px[i], b.top + S.py[i]];
        }
      }
      return null;
    }
  };
  draw();
})();
"""


def _seg_payload(data: RunData, cols: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    """What hovering a segment shows: name, rows, share, colour, its three strongest facts,
    whether it was split, and why not (in words)."""
    facts_by = {} if data.facts is None else dict(tuple(data.facts.groupby("path", sort=False)))
    out = {}
    for n in data.tree:
        p = n["path"]
        found = facts.findings(facts_by.get(p))
        out[p] = {"name": names[p], "short": _label(names[p], 24), "rows": n["size"],
                  "share": n["share"], "color": cols.get(p, NOISE),
                  "facts": [f.text.split(";", 1)[0] for f in found], "split": bool(n["children"]),
                  "stop": stop_words(n.get("stop_reason")), "anchor": anchor(p)}
    return out


def _map(data: RunData, cols: dict[str, str], names: dict[str, str]) -> str:
    head = '<section id="map"><h2>The map</h2>'
    frames = {} if data.map is None else dict(tuple(data.map.groupby("node", sort=False)))
    if ROOT not in frames:
        return head + ('<p class="muted">No map: the root node was not embedded (its sample was '
                       'too small).</p></section>')
    frame = frames[ROOT]
    cfg = data.manifest.get("config", {})
    k = cfg.get("embedding", {}).get("n_components", 2)
    rows = data.manifest.get("rows", {}).get("in") or 0
    root = next(n for n in data.tree if n["path"] == ROOT)
    n_sample = (root.get("fit") or {}).get("n_sample") or len(frame)
    note = (f"Each dot is one row; rows close together are similar (the axes of such a map have "
            f"no units: only closeness counts). Shown: a random sample of {len(frame):,} of the "
            f"{rows:,} rows ({pct(len(frame) / rows) if rows else '?'})"
            + (f"; the map was fitted on {n_sample:,} sampled rows" if n_sample != len(frame)
               else "") + ", so the page stays small and quick however large the table. "
            "Grey dots belong to no segment at this level. Hover over a dot to see its segment; "
            "click to open a segment's own map with its sub-segments; the trail above the map "
            "leads back.")
    if k > 2:
        note += (f" The embedding has {k} dimensions; the maps show the first two, so segments "
                 "that are apart in the others may overlap here.")
    payload = {"noise": NOISE, "seg": _seg_payload(data, cols, names),
               "maps": {node: _node_payload(f, node) for node, f in frames.items()}}
    return (head + f'<p class="muted">{e(note)}</p>'
            '<div class="mapbar"><nav id="map-crumbs" aria-label="map level"></nav>'
            '<label><input type="checkbox" id="map-by-leaf"> colour by final segment</label></div>'
            '<div class="maphost"><canvas id="map-main" data-map="root" width="640" height="640" '
            'aria-label="map of the rows, coloured by segment"></canvas>'
            '<div id="map-tip" class="tip" hidden></div></div><p id="map-note" class="muted small">'
            '</p>'
            f'<script type="application/json" id="map-data">{_safe_json(payload)}</script>'
            f"<script>{MAP_JS}</script></section>")


def _profile_table(rows: list[dict[str, Any]], parent: str | None) -> str:
    if not rows:
        return ""
    rest = "Rest of population" if parent in (None, ROOT) else f"Rest of segment {parent}"
    body = []
    for r in rows:
        tag = ' <span class="role">descriptive</span>' if r.get("role") == "describe" else ""
        if r["kind"] == "numeric":
            d = r["effect"]
            arrow = "" if d is None or not math.isfinite(d) else ("▲" if d > 0 else "▼")
            unit, tz = r.get("unit"), r.get("time_zone")
            if unit:  # a date, time or duration: shown as one, in its zone (said)
                res = temporal.resolution(r["member"], r["rest"], r["q25"], r["q75"])

                def show(v, unit=unit, tz=tz, res=res):
                    return e(temporal.shown(v, unit, tz, res))
                zone = temporal.zone_name(tz)
                where = f" <span class='muted'>({e(zone)})</span>" if zone else ""
            else:
                show, where = number, ""
            body.append(f"<tr><td>{e(r['feature'])}{where}{tag}</td>"
                        f"<td class='n'>{show(r['member'])}</td>"
                        f"<td class='n muted'>{show(r['q25'])} – {show(r['q75'])}</td>"
                        f"<td class='n'>{show(r['rest'])}</td><td class='n'>{show(r['population'])}"
                        f"</td><td class='n'>{arrow} {number(d)} sd</td></tr>")
        else:
            lift = r["lift"]
            if r["rest"] == 0 and r["member"] > 0:
                diff = "only here"
            elif r["member"] == 0 and r["rest"] > 0:
                diff = "▼ none here"
            elif lift is None or not math.isfinite(lift):
                diff = "–"
            else:
                diff = f"{'▲' if lift > 1 else '▼'} ×{number(lift)}"
            pop = "–" if r["population"] is None else pct(r["population"])
            body.append(f"<tr><td>{e(r['feature'])} = {e(r['level'])}{tag}</td>"
                        f"<td class='n'>{pct(r['member'])}</td><td class='n muted'></td>"
                        f"<td class='n'>{pct(r['rest'])}</td><td class='n'>{pop}</td>"
                        f"<td class='n'>{e(diff)}</td></tr>")
    return ("<table class='profile'><thead><tr><th>Column</th><th class='n'>Members</th>"
            "<th class='n'>Members' middle half</th>"
            f"<th class='n'>{e(rest)}</th><th class='n'>Population</th><th class='n'>Difference"
            "</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
            "<p class='muted small'>Numbers: means, in the column's own units (share of rows "
            "for a category; dates and times as dates and times, in the time zone named beside "
            "the column). Difference: in standard deviations (sd) for numbers, as a ratio "
            "of shares for categories (\"only here\": the rest has none). Descriptive columns "
            "are profiled only: they took no part in finding the segments. Estimated on the "
            "training sample.</p>")


def _facts_list(found: list[facts.Finding], rows: pd.DataFrame | None) -> str:
    if rows is None or rows.empty:
        return ""
    items = []
    seen: set[str] = set()
    for r in rows.sort_values("rank").to_dict("records"):
        if r["column"] in seen:
            continue
        seen.add(r["column"])
        share = r["member_share"]
        behind = "" if share is None or not math.isfinite(share) else \
            f' <span class="muted">({pct(share, 0)} of members)</span>'
        tag = ' <span class="role">descriptive</span>' if r["role"] == "describe" else ""
        items.append(f"<li>{e(r['text'])}{tag}{behind if r['kind'] == 'categorical' else ''}</li>")
        if len(items) == 6:
            break
    return ('<div class="factlist"><div class="k">Strongest differences, by effect size</div>'
            f'<ol>{"".join(items)}</ol></div>')


def _cluster(n: dict[str, Any], data: RunData, cols: dict[str, str], pop: dict[tuple, float],
             explain_on: bool, names: dict[str, str]) -> str:
    p = n["path"]
    parent = n["parent"]
    by_path = {m["path"]: m for m in data.tree}
    color = cols.get(p, NOISE)
    shap = prof = seg_facts = None
    if data.shap is not None:
        shap = data.shap[data.shap["cluster"] == p]
    if data.profiles is not None:
        prof = data.profiles[data.profiles["cluster"] == p]
    if data.facts is not None:
        seg_facts = data.facts[data.facts["path"] == p]
    found = facts.findings(seg_facts)
    bits = [f"{n['size']:,} rows", f"{pct(n['share'])} of all rows"]
    if parent not in (None, ROOT):
        bits.append(f"{pct(n['size'] / max(1, by_path[parent]['size']))} of segment {parent}")
    q = n.get("classifier") or {}
    if q.get("auc") is not None:
        bits.append(f"AUC {q['auc']:.3f}")
    if n.get("stability") is not None:
        bits.append(f"stability {n['stability']:.2f}")
    bits.append(f"{len(n['children'])} sub-segments" if n["children"] else
                f"final segment: {stop_words(n.get('stop_reason')) or 'not split'}")
    warn = ""
    if n.get("artefact"):
        warn = (f'<p class="warn">Caution: this segment is one value of a single column '
                f'({e(n["artefact"].removeprefix("splits on ").removesuffix(" only"))}), '
                'which the other columns do not reproduce. Its AUC and stability only say that '
                'this column separates it, not that its members behave differently.</p>')
    ex = ""
    if data.exemplars is not None:
        ids = data.exemplars[data.exemplars["path"] == p].sort_values("rank")["id"]
        if len(ids):
            ex = ('<p class="small"><span class="muted">Typical members (ids nearest the '
                  'segment\'s centre on the map):</span> '
                  + ", ".join(f"<code>{e(v)}</code>" for v in ids) + "</p>")
    if not explain_on:
        body = ('<p class="muted">Explanations disabled for this run (explain.enabled: false): '
                'no classifier, SHAP or profile.</p>')
        lead = ""
    else:
        lead = f'<p class="lead">{e(facts.sentence(p, parent, found))}</p>'
        body = _facts_list(found, seg_facts)
        if q.get("model") is None and q.get("skip_reason"):
            body += f'<p class="muted">No classifier for this segment: {e(q["skip_reason"])}.</p>'
        screen = q.get("feature_screen")
        if screen and shap is not None and not shap.empty:
            # A wide node's model saw only the columns that best separate the segment: the
            # others have no bar because they were not looked at, not because they do not matter.
            body += (f'<p class="muted">The classifier saw only the {screen["kept"]:,} of '
                     f'{screen["of"]:,} columns that best separate this segment from the rest '
                     'of its parent on their own (explain.max_features); the other columns were '
                     'not looked at, so they have no SHAP bar whatever their importance.</p>')
        if shap is not None and not shap.empty:
            body += ('<div class="charts"><figure><figcaption>What identifies members: how much '
                     'each column moves the classifier</figcaption>'
                     f'{shap_bars(shap, color)}</figure>'
                     '<figure><figcaption>Which way it pushes: members vs everyone else'
                     f'</figcaption>{shap_direction(shap, color)}</figure></div>')
        body += _profile_table(facts.profile_rows(seg_facts, prof, pop), parent)
    return (f'<section class="cluster" id="{anchor(p)}" data-cluster="{e(p)}" '
            f'style="border-left-color:{e(color)}"><h3>{swatch(color)}<span class="path">{e(p)}'
            f'</span> {e(names[p])}</h3>'
            f'{lead}<p class="facts">{" · ".join(e(b) for b in bits)}</p>{warn}{ex}{body}'
            '</section>')


def _refused(tree: list[dict[str, Any]], names: dict[str, str]) -> str:
    """Every node that was not split further, with the reason in words."""
    rows = []
    for n in sorted(tree, key=lambda n: path_key(n["path"])):
        if n["children"] or not n.get("stop_reason"):
            continue
        p = n["path"]
        rows.append(f'<tr data-refused="{e(p)}"><td><span class="path">{e(p)}</span> '
                    f'{e(names[p])}</td><td class="n">{n["size"]:,}</td>'
                    f'<td title="{e(n["stop_reason"])}">{e(stop_words(n["stop_reason"]))}</td></tr>')
    if not rows:
        return ""
    return ('<section id="refused"><h2>Why segments were not split further</h2>'
            '<p class="muted">Each final segment was considered for splitting; this is why it '
            'was not (hover for the exact rule and setting).</p><table class="plain wide"><thead>'
            '<tr><th>Segment</th><th class="n">Rows</th><th>Reason</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></section>")


GLOSSARY = (
    ("Segment", "A group of rows that are more like each other than like the rest. Segments "
     "are numbered by size within their parent: 2.1 is the second-largest sub-segment of "
     "segment 2. Names are built from each segment's strongest facts (or chosen by a person)."),
    ("Unclustered (noise)", "Rows the clustering found no dense group for. They stay in the "
     "segment above; rows unclustered at the first level are in no segment."),
    ("Map", "A two-dimensional picture (UMAP) that keeps similar rows close together. Its axes "
     "have no units; only closeness counts."),
    ("Fact", "A way members differ from the rest of their parent segment, ranked by effect "
     "size. \"Share of members\" says how many members the fact is true of."),
    ("Effect size (sd)", "For a number: the difference of the two means in standard "
     "deviations (0.2 small, 0.5 medium, 0.8 large). For a category: the same scale for two "
     "shares (Cohen's h)."),
    ("Lift", "How many times more common a category is among members than among the rest. "
     "When the rest has none at all, the ratio is undefined and the fact says \"only in this "
     "segment\"."),
    ("AUC", "How well a classifier that sees only the columns tells a segment's members from "
     "the rest of its parent, on rows it was not trained on: 0.5 is a coin toss, 1.0 is "
     "perfect. A high AUC means the segment is real in the data, not how important it is."),
    ("SHAP", "How much one column moves that classifier's score for a row, in log-odds of "
     "membership. The charts show its average size per column (importance) and its average "
     "among members and everyone else (direction)."),
    ("Stability (Jaccard)", "The segmentation is redone several times on random 80% "
     "subsamples. For each redo, the segment's best match is found and their overlap "
     "measured as shared rows divided by rows in either (Jaccard). Stability is the average: "
     "1.0 means it reappears exactly; at least 0.75 counts as stable; at or below 0.5 it "
     "dissolves."),
    ("Descriptive column", "A column listed under input.describe: profiled for each segment, "
     "but never used to find the segments."),
    ("Typical members", "The rows nearest a segment's centre on the map: ids to look up."),
)


def _glossary() -> str:
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in GLOSSARY)
    return f'<section id="glossary"><h2>Glossary</h2><dl>{items}</dl></section>'


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
.tree td.muted { white-space: nowrap; } .tree td.name { min-width: 240px; }
.tree td:last-child { min-width: 180px; } main { overflow-x: auto; }
.tree a { color: inherit; text-decoration: none; font-weight: 600; }
.tree a:hover { text-decoration: underline; }
.maps { display: flex; gap: 18px; flex-wrap: wrap; }
figure { margin: 8px 0; } figcaption { font-size: 13px; font-weight: 600; color: #3b434d;
  margin-bottom: 4px; }
.zooms { display: flex; gap: 14px; flex-wrap: wrap; }
figure.zoom canvas { width: 230px; height: 230px; }
h3.sub { font-size: 16px; margin: 18px 0 2px; }
canvas { width: 640px; height: 640px; max-width: 100%; background: #fbfbfc;
  border: 1px solid #e3e6ea; border-radius: 8px; display: block; }
.maphost { position: relative; width: 640px; max-width: 100%; }
.mapbar { display: flex; justify-content: space-between; align-items: center; gap: 10px;
  flex-wrap: wrap; margin: 6px 0; font-size: 13px; max-width: 640px; }
#map-crumbs button { font: inherit; border: 1px solid #cfd5dc; background: #fff;
  border-radius: 6px; padding: 2px 8px; cursor: pointer; color: #2a5db0; }
#map-crumbs button:disabled { color: #1d232b; font-weight: 600; cursor: default;
  background: #eef1f5; }
.tip { position: absolute; z-index: 2; width: 300px; background: rgba(255,255,255,.97);
  border: 1px solid #cfd5dc; border-radius: 8px; padding: 8px 10px; font-size: 12.5px;
  box-shadow: 0 2px 8px rgba(0,0,0,.15); pointer-events: none; }
.tip ul { margin: 4px 0; padding-left: 16px; } .tip i { color: #5d6673; }
.path { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .85em;
  background: #eef1f5; border-radius: 4px; padding: 0 5px; color: #3b434d; }
.role { font-size: 11px; color: #7a5195; border: 1px solid #d9c8e6; border-radius: 8px;
  padding: 0 6px; margin-left: 4px; }
.warn { background: #fff6e5; border-left: 4px solid #E69F00; padding: 6px 10px;
  font-size: 14px; }
.factlist .k { font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
  color: #5d6673; } .factlist ol { margin: 4px 0 10px; padding-left: 22px; font-size: 14px; }
svg.chart text.axlab { font-size: 11px; fill: #3b434d; }
dl dt { font-weight: 600; margin-top: 8px; } dl dd { margin: 2px 0 0 0; color: #3b434d; }
table.wide { width: 100%; }
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
    names = _names(data)
    ov = facts.overview(tree)
    cfg = data.manifest.get("config", {})
    explain_on = bool(cfg.get("explain", {}).get("enabled", False))
    pop = facts.population(tree, data.profiles)
    clusters = [n for n in tree if n["path"] != ROOT]
    if clusters:
        cluster_html = "".join(_cluster(n, data, cols, pop, explain_on, names) for n in clusters)
    else:
        root = tree[0]
        cluster_html = (f'<section class="cluster" data-cluster="{ROOT}"><h3>One segment</h3>'
                        '<p class="lead">The whole table is one segment: no sub-structure was '
                        f'kept ({e(stop_words(root.get("stop_reason")) or "not split")}).</p>'
                        '</section>')
    source = f"{cfg.get('input', {}).get('path', '')} → {cfg.get('output', {}).get('path', '')}"
    intro = ("This page describes how the rows of one table fall into segments of similar "
             "rows, and what sets each segment apart. Segments were found on a map of the "
             "data and then split again where they had structure of their own.")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Segmentation report: {e(cfg.get('output', {}).get('path', ''))}</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"<h1>Segmentation report</h1><p class='muted'>{e(source)}</p><p>{e(intro)}</p>"
        f"{_overview(data, ov)}{_map(data, cols, names)}{_tree(tree, cols, names)}"
        f'<h2>The segments</h2>{cluster_html}{_refused(tree, names)}{_glossary()}'
        '<p class="muted small">Generated by recluster from the run\'s outputs (tree.json, '
        'facts.parquet, segments.parquet, exemplars.parquet, shap_summary.parquet, '
        'profiles.parquet, report/map.parquet, manifest.json).</p>'
        "</main></body></html>")
