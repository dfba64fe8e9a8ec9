"""``compare.html``: the flows between two runs' segments as a self-contained page (pure, no I/O).

One flow (Sankey) diagram per level, hand-written inline SVG: old segments on the left, new
ones on the right, each as tall as its rows; a band per flow, as wide as its rows and coloured by
its kind; rows in one run only flow from or to a grey "not in ..." bar. Below each diagram the
significant flows as a table. No script, no external URL: a Content-Security-Policy forbids every
fetch; every string from data is escaped.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from recluster.compute.compare import LEAF, level_order
from recluster.compute.paths import NodePath

CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
KIND_COLOURS = {"same": "#009E73", "split": "#0072B2", "merged": "#E69F00", "new": "#CC79A7",
                "gone": "#D55E00", "moved": "#9a9a9a"}
ABSENT_OLD = "(not in OLD)"
ABSENT_NEW = "(not in NEW)"
_W, _BAR, _GAP, _H = 760, 14, 6, 420


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _path_key(path: str) -> tuple:
    if path in (ABSENT_OLD, ABSENT_NEW):
        return (1, ())
    return (0, NodePath.parse(path).parts)


def _column(sizes: dict[str, int], height: float) -> dict[str, tuple[float, float]]:
    """Top and height of each segment's bar, stacked in path order."""
    total = max(sum(sizes.values()), 1)
    usable = height - _GAP * max(len(sizes) - 1, 0)
    out, y = {}, 10.0
    for name in sorted(sizes, key=_path_key):
        h = max(usable * sizes[name] / total, 1.0)
        out[name] = (y, h)
        y += h + _GAP
    return out


def sankey(m: pd.DataFrame) -> str:
    """An inline SVG of one level's flows (``matches.parquet`` rows of that level)."""
    old = m["old_path"].where(m["old_path"].notna(), ABSENT_OLD)
    new = m["new_path"].where(m["new_path"].notna(), ABSENT_NEW)
    rows = m["shared_rows"].to_numpy()
    old_sizes = pd.Series(rows).groupby(old.to_numpy()).sum().to_dict()
    new_sizes = pd.Series(rows).groupby(new.to_numpy()).sum().to_dict()
    height = max(_H, 24 * max(len(old_sizes), len(new_sizes)))
    left, right = _column(old_sizes, height), _column(new_sizes, height)
    scale_l = {k: h / max(old_sizes[k], 1) for k, (_, h) in left.items()}
    scale_r = {k: h / max(new_sizes[k], 1) for k, (_, h) in right.items()}
    x0, x1 = 150.0, _W - 150.0
    used_l = {k: 0.0 for k in left}
    used_r = {k: 0.0 for k in right}
    bands = []
    order = sorted(range(len(m)), key=lambda i: (_path_key(old.iat[i]), _path_key(new.iat[i])))
    for i in order:
        o, n, r = old.iat[i], new.iat[i], int(rows[i])
        hl, hr = r * scale_l[o], r * scale_r[n]
        yl = left[o][0] + used_l[o]
        yr = right[n][0] + used_r[n]
        used_l[o] += hl
        used_r[n] += hr
        xm = (x0 + x1) / 2
        d = (f"M{x0:.1f},{yl:.1f} C{xm:.1f},{yl:.1f} {xm:.1f},{yr:.1f} {x1:.1f},{yr:.1f} "
             f"L{x1:.1f},{yr + hr:.1f} C{xm:.1f},{yr + hr:.1f} {xm:.1f},{yl + hl:.1f} "
             f"{x0:.1f},{yl + hl:.1f} Z")
        kind = m["kind"].iat[i]
        bands.append(f'<path d="{d}" fill="{KIND_COLOURS.get(kind, "#999")}" fill-opacity="0.45">'
                     f"<title>{_e(o)} \u2192 {_e(n)}: {r} rows, {_e(kind)}, Jaccard "
                     f"{m['jaccard'].iat[i]:.3f}</title></path>")
    bars = []
    for side, col, x, anchor, tx in (("OLD", left, x0 - _BAR, "end", x0 - _BAR - 6),
                                     ("NEW", right, x1, "start", x1 + _BAR + 6)):
        sizes = old_sizes if side == "OLD" else new_sizes
        for name, (y, h) in col.items():
            grey = name in (ABSENT_OLD, ABSENT_NEW)
            bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{_BAR}" height="{h:.1f}" '
                        f'fill="{"#bbbbbb" if grey else "#4a4a4a"}"><title>{side} {_e(name)}: '
                        f"{sizes[name]} rows</title></rect>")
            bars.append(f'<text x="{tx:.1f}" y="{y + h / 2 + 4:.1f}" text-anchor="{anchor}">'
                        f"{_e(name)} ({sizes[name]})</text>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height + 20:.0f}" '
            f'viewBox="0 0 {_W} {height + 20:.0f}" role="img">'
            f'<text x="{x0 - _BAR:.0f}" y="8" text-anchor="end" class="h">OLD</text>'
            f'<text x="{x1 + _BAR:.0f}" y="8" class="h">NEW</text>'
            + "".join(bands) + "".join(bars) + "</svg>")


def _table(m: pd.DataFrame) -> str:
    shown = m[m["significant"] | m["old_path"].isna() | m["new_path"].isna()]
    shown = shown.sort_values("shared_rows", ascending=False)
    body = "".join(
        f"<tr><td>{_e(ABSENT_OLD if pd.isna(r.old_path) else r.old_path)}</td>"
        f"<td>{_e(ABSENT_NEW if pd.isna(r.new_path) else r.new_path)}</td>"
        f'<td class="n">{r.shared_rows}</td><td class="n">{r.old_rows}</td>'
        f'<td class="n">{r.new_rows}</td><td class="n">{r.jaccard:.3f}</td>'
        f'<td><span class="k" style="background:{KIND_COLOURS.get(r.kind, "#999")}"></span>'
        f"{_e(r.kind)}</td></tr>"
        for r in shown.itertuples(index=False))
    return ("<table><tr><th>old</th><th>new</th><th>shared rows</th><th>old rows</th>"
            "<th>new rows</th><th>Jaccard</th><th>kind</th></tr>" + body + "</table>"
            f"<p class=\"note\">{len(shown)} of {len(m)} flows shown (significant ones and rows "
            "in one run only); matches.parquet holds all.</p>")


def render(matches: pd.DataFrame, fates: dict[str, dict[str, int]], old_url: str,
           new_url: str) -> str:
    """The page, from ``matches.parquet``'s frame and :func:`recluster.compute.compare.segment_fates`."""
    legend = " ".join(f'<span class="k" style="background:{c}"></span>{_e(k)}'
                      for k, c in KIND_COLOURS.items())
    sections = []
    for level in sorted(matches["level"].unique(), key=level_order):
        m = matches[matches["level"] == level].reset_index(drop=True)
        f = fates.get(level, {})
        title = "final segments" if level == LEAF else f"level {level.split('_', 1)[1]}"
        sections.append(
            f"<h2>{_e(title)}</h2><p>{f.get('old segments', 0)} old and "
            f"{f.get('new segments', 0)} new segments. Old: {f.get('same', 0)} same, "
            f"{f.get('split', 0)} split, {f.get('merged', 0)} merged, {f.get('gone', 0)} gone, "
            f"{f.get('moved', 0)} moved; new: {f.get('new', 0)} new. Rows only in OLD: "
            f"{f.get('rows only in old', 0)}, only in NEW: {f.get('rows only in new', 0)}.</p>"
            + sankey(m) + _table(m))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            "<title>recluster compare</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:980px}"
            "svg{display:block;margin:1em 0;font-size:12px}svg .h{font-weight:600}"
            "table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}"
            ".k{display:inline-block;width:10px;height:10px;margin:0 4px 0 8px}"
            ".note{color:#666;font-size:12px}</style></head><body>"
            f"<h1>How segments changed</h1><p>OLD: {_e(old_url)}<br>NEW: {_e(new_url)}</p>"
            f"<p>Kinds: {legend}</p>" + "".join(sections) + "</body></html>")
