"""A synthetic user table with known, nested segment structure (for the demo, tests, benchmark).

Rows belong to ``n_groups`` groups that sit far apart in a first block of informative columns;
inside each group, ``n_sub`` sub-groups sit close together in a second block, so one global map
tends to merge them and a zoom into the group separates them. Some columns are right-skewed
(counts, spend), one is categorical (country, loosely tied to the group), some values are
missing, and the rest is noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COUNTRIES = ["SE", "US", "DE", "BR", "JP", "IN", "FR", "MX"]


def make_table(n_rows: int, n_groups: int = 4, n_sub: int = 3, n_informative: int = 6,
               n_noise: int = 6, group_sep: float = 20.0, sub_sep: float = 3.0,
               missing_share: float = 0.03, seed: int = 0,
               row_seed: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate the table and its truth.

    Each informative column is ``group centre + sub-group offset + N(0, 1)``: group centres are
    spread by ``group_sep``, sub-group offsets by ``sub_sep``. Scaled over the whole table the
    sub-group offsets are tiny next to the group spread and the noise columns; scaled inside one
    group they are not. That is the situation the recursive zoom exists for.

    Parameters
    ----------
    n_rows : int
    n_groups, n_sub : int
        Top-level groups, and sub-groups inside each.
    n_informative, n_noise : int
        Columns carrying the structure, and columns carrying nothing.
    group_sep, sub_sep : float
        Spread of group centres / sub-group offsets in units of the within-cluster spread.
    missing_share : float
        Share of missing values in two of the columns.
    seed : int
        Fixes the structure (centres, offsets, home countries).
    row_seed : int, optional
        Fixes the rows drawn from that structure (default: derived from ``seed``); another
        ``row_seed`` gives fresh rows of the same segments.

    Returns
    -------
    table : DataFrame (n_rows, 1 + n_informative + n_noise + 3)
        ``user_id`` (int64, unique, shuffled), numeric features ``f*`` and ``noise*``,
        right-skewed ``sessions`` and ``spend``, categorical ``country``.
    truth : DataFrame (n_rows, 3) with ``user_id``, ``group`` and ``subgroup`` (``g*n_sub+s``)
    """
    structure = np.random.default_rng(seed)
    # Groups are meant to be clearly apart: redraw centres that land too close by chance.
    for _ in range(100):
        g_centres = structure.normal(0, group_sep, (n_groups, n_informative))
        gaps = np.linalg.norm(g_centres[:, None] - g_centres[None], axis=-1)
        if n_groups < 2 or gaps[np.triu_indices(n_groups, 1)].min() >= group_sep * np.sqrt(n_informative):
            break
    s_offsets = structure.normal(0, sub_sep, (n_groups, n_sub, n_informative))
    home = structure.integers(0, len(COUNTRIES), n_groups)
    rng = np.random.default_rng([seed, 1] if row_seed is None else [seed, 2, row_seed])
    group = rng.integers(0, n_groups, n_rows)
    sub = rng.integers(0, n_sub, n_rows)
    x = g_centres[group] + s_offsets[group, sub] + rng.normal(0, 1, (n_rows, n_informative))
    cols: dict[str, np.ndarray] = {f"f{j}": x[:, j] for j in range(n_informative)}
    for j in range(n_noise):
        cols[f"noise{j}"] = rng.normal(0, 1, n_rows)
    # Right-skewed, non-negative activity columns that follow the structure.
    cols["sessions"] = np.floor(np.exp(2.0 + 0.05 * x[:, 0] + rng.normal(0, 0.2, n_rows)))
    cols["spend"] = np.exp(3.0 + 0.05 * x[:, 1] + rng.normal(0, 0.2, n_rows))
    table = pd.DataFrame(cols)
    for c in ("noise0", "spend"):
        table.loc[rng.random(n_rows) < missing_share, c] = np.nan
    country_idx = np.where(rng.random(n_rows) < 0.6, home[group],
                           rng.integers(0, len(COUNTRIES), n_rows))
    table["country"] = np.array(COUNTRIES, dtype=object)[country_idx]
    ids = rng.permutation(np.arange(1_000_000, 1_000_000 + 7 * n_rows, 7, dtype=np.int64)[:n_rows])
    table.insert(0, "user_id", ids)
    truth = pd.DataFrame({"user_id": ids, "group": group, "subgroup": group * n_sub + sub})
    return table, truth


def write_partitioned(table: pd.DataFrame, fs, root: str, n_files: int,
                      row_group_rows: int = 50_000) -> list[str]:
    """Write ``table`` as ``n_files`` Parquet files under ``root`` through filesystem ``fs``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = []
    fs.makedirs(root, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(table)), n_files)):
        path = f"{root.rstrip('/')}/part-{i:04d}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(pa.Table.from_pandas(table.iloc[part], preserve_index=False), f,
                           row_group_size=row_group_rows)
        paths.append(path)
    return paths
