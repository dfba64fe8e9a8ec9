"""Storage: the only package that opens files (fsspec locations, input reading, output
publication, the model files' format)."""
