"""The trainer: the experiment (config, model, data, checkpoints), the training loop and its
steps, evaluation, sampling, checkpointing, reporting, the optimiser, and the run lifecycle
(Ctrl-C, the workdir lock)."""
