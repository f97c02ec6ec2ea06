"""Platform helpers: devices and processes (pmap sharding, jax.distributed, one CPU device per
core, huge pages, accelerators' peak FLOP/s), workdir files on disks and buckets, and the
commands' shared plumbing (cli.py) and console (console.py)."""
