"""Platform helpers: devices and processes (pmap sharding, jax.distributed, one CPU device per
core, huge pages), command-line plumbing, and workdir files on disks and buckets."""
