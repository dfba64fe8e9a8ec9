"""The Dask layer: wraps the pure stages into collections and tasks; never re-implements them."""
