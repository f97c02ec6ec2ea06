"""python -m flowpp_jax.bench: the benchmark (flowpp_jax/tools/bench.py)."""
if __name__ == '__main__':
  from flowpp_jax.runtime import host_memory
  host_memory.reexec_with_huge_pages()  # before the heavy imports, which it would repeat
  from flowpp_jax.tools import bench
  bench.run()
