"""python -m flowpp_jax.import_weights: the authors' weights as a workdir, and back
(flowpp_jax/tools/import_weights.py)."""
if __name__ == '__main__':
  import os
  # Before anything imports TensorFlow (etils.epath does where it is installed): its start-up
  # log lines are not this command's output, and its oneDNN kernels (which announce
  # themselves) do nothing for reading a checkpoint.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  from flowpp_jax.tools import import_weights
  import_weights.run()
