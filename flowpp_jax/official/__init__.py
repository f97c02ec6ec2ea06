"""The authors' TensorFlow code's variable names for our parameter tree (names.py), and their
weights read into a workdir and written back (weights.py)."""
