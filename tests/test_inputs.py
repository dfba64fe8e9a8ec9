"""Unit tests of :mod:`recluster.storage.inputs`: ``plan_pieces`` covers each row group once and
plans nothing for an empty input. No cluster.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from recluster.storage.inputs import FileInfo, plan_pieces

pytestmark = pytest.mark.timeout(120)


def _infos_for_pieces() -> list[FileInfo]:
    schema = pa.schema([("id", pa.int64())])
    return [
        FileInfo("f0.parquet", schema, (400, 400, 400, 0, 400, 100)),
        FileInfo("empty.parquet", schema, ()),
        FileInfo("zeros.parquet", schema, (0, 0)),
        FileInfo("f1.parquet", schema, (5_000, 10, 10)),  # one row group above the target
        FileInfo("f2.parquet", schema, tuple(range(1, 300, 7))),
        FileInfo("f3.parquet", schema, (1_000,)),
    ]


@pytest.mark.parametrize("rows_per_piece", [1, 999, 1_000, 1_234, 10**9])
def test_plan_pieces_covers_each_row_group_once(rows_per_piece):
    infos = _infos_for_pieces()
    pieces = plan_pieces(infos, rows_per_piece)
    seen = [(p.path, rg) for p in pieces for rg in p.row_groups]
    want = [(i.path, rg) for i in infos for rg, n in enumerate(i.row_group_rows) if n > 0]
    assert sorted(seen) == sorted(want)
    assert len(seen) == len(set(seen))
    assert sum(p.n_rows for p in pieces) == sum(i.n_rows for i in infos)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    rows = {i.path: i.row_group_rows for i in infos}
    for p in pieces:
        assert p.n_rows == sum(rows[p.path][rg] for rg in p.row_groups)
        assert p.n_rows > 0
        assert list(p.row_groups) == sorted(p.row_groups)
        assert p.n_rows <= rows_per_piece or len(p.row_groups) == 1
    # No file with zero rows yields a piece.
    assert {p.path for p in pieces} == {i.path for i in infos if i.n_rows > 0}
    # Greedy: a piece could not have taken the next piece's first row group of the same file.
    for a, b in zip(pieces, pieces[1:], strict=False):
        if a.path == b.path:
            assert a.n_rows + rows[b.path][b.row_groups[0]] > rows_per_piece
    # Deterministic.
    assert plan_pieces(infos, rows_per_piece) == pieces


def test_plan_pieces_empty_input():
    schema = pa.schema([("id", pa.int64())])
    assert plan_pieces([FileInfo("e.parquet", schema, (0,))], 100) == []
    assert plan_pieces([], 100) == []
