"""What a worker tells Dask a pandas frame weighs, without a Series per column.

Every result a task keeps is sized twice by its worker (for the scheduler's ``nbytes`` and for
the spill buffer), and Dask's estimate of a DataFrame builds a Series for each column to ask its
memory usage: 16 ms for a 500-column frame whatever its rows, ~14 CPU s of a depth-2 run of the
benchmark's 300,000 x 500 table (py-spy, `jobs/benchmark.py --wide`), 1.8 s at 32 columns.

:func:`frame_sizeof` gives the same estimate from the frame's blocks (one 2-D array for all of
its float columns): the bytes of each block, plus Dask's fixed 1,200 bytes per block (Dask
counts them per run of equal dtypes in column order: the two differ by a few KB at most).
Frames that hold Python objects (object or python-string columns, whose bytes Dask samples)
are sized by Dask's own function. :class:`FrameSizes` registers it in each worker process.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from dask.sizeof import sizeof
from distributed.diagnostics.plugin import WorkerPlugin

#: Dask's fixed overhead per run of columns of one dtype, counted here per block.
BLOCK_OVERHEAD = 1200


#: Dask's own DataFrame estimate, looked up at import: that also makes Dask register its pandas
#: estimates now, which would otherwise replace ours when first needed.
_DASK = sizeof.dispatch(pd.DataFrame)


def frame_sizeof(df: pd.DataFrame) -> int:
    """Dask's estimate of ``df``'s bytes, from its blocks (see the module's docstring)."""
    try:
        blocks = df._mgr.blocks
    except AttributeError:  # a pandas whose internals differ: Dask's way
        return _DASK(df)
    total = sizeof(df.index) + sizeof(df.columns)
    for blk in blocks:
        values = blk.values
        if values.dtype == object or (isinstance(values.dtype, pd.StringDtype)
                                      and values.dtype.storage == "python"):
            return _DASK(df)  # Python objects: Dask samples their sizes
        total += sizeof(values) if isinstance(values, np.ndarray) else int(values.nbytes)
        total += BLOCK_OVERHEAD
    return max(BLOCK_OVERHEAD, total)


def use_frame_sizeof() -> None:
    """Size DataFrames with :func:`frame_sizeof` in this process (idempotent)."""
    sizeof.register(pd.DataFrame)(frame_sizeof)


class FrameSizes(WorkerPlugin):
    """:func:`use_frame_sizeof` in each worker process."""

    name = "recluster-frame-sizes"

    def setup(self, worker) -> None:
        use_frame_sizeof()
