"""Pure compute: arrays and frames plus typed config in, arrays and frames out. Nothing here
imports Dask or opens a file."""
