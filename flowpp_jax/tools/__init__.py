"""Tools around the model: the benchmark, device peaks, the round-trip check, parameter
summaries, and the import and export of the official weights."""
