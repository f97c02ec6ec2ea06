"""Data: the registry of data sets and their readers, deterministic host-sharded batches,
preparing tfds data sets, and image files."""
