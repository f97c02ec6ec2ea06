"""Data: the registry of data sets and their readers, deterministic host-sharded batches
and image files."""
