"""recluster: explainable, recursive segmentation of data-lake tables, run as a Dask job.

UMAP embedding -> HDBSCAN clustering -> zoom into each cluster and repeat, fitted on
hash-drawn samples and applied to every row of partitioned Parquet in parallel.
"""

__version__ = "0.1.0"
