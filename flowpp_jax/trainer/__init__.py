"""The trainer: the experiment (config, model, data, checkpoints), the training loop and its
steps, evaluation, sampling, checkpointing, reporting, the optimiser, the run lifecycle
(Ctrl-C, the workdir lock), and the modes of python -m flowpp_jax.main (modes.py, summary.py)."""
