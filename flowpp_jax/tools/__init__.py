"""Developer commands beside the user's ones: the codec's benchmark
(python -m flowpp_jax.tools.codec_bench) and its comparison with other codecs
(python -m flowpp_jax.tools.compare_codecs)."""
