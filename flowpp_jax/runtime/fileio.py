"""Workdir files on a local disk or in a bucket (``gs://BUCKET/...``), through etils.epath.

epath reaches gs:// through TensorFlow's gfile when TensorFlow is installed, and otherwise
through fsspec with gcsfs (``pip install gcsfs``); local paths go to the os module either way.
``pathlib.Path('gs://b/run')`` is ``gs:/b/run``, a local path: URIs must stay strings or
epath paths all the way to here.

Object stores have no folders and no append (gcsfs silently turns ``open(mode='a')`` into an
overwrite): ``makedirs`` skips URIs, and writers that append locally rewrite remote files.
"""
import contextlib
import errno
import importlib.util
import os
import shutil

from etils import epath


def path(p) -> epath.Path:
  """A local path or a URI such as gs://bucket/run as an epath.Path (keeps the '//').

  Raises ValueError for a gs:// URI when neither gcsfs nor TensorFlow is installed (epath
  would raise ImportError at the first access, as a traceback instead of one error line).
  """
  p = epath.Path(p)
  if scheme(p) == 'gs' and not _has_gcs_client():
    raise ValueError(f'{p} needs a Google Cloud Storage client: pip install gcsfs')
  return p


def _has_gcs_client() -> bool:
  return any(importlib.util.find_spec(name) for name in ('gcsfs', 'tensorflow'))


def scheme(p):
  """'gs' for gs://bucket/..., None for a local path."""
  head, sep, _ = os.fspath(p).partition('://')
  return head if sep and head.isalnum() else None


def is_remote(p) -> bool:
  return scheme(p) is not None


def makedirs(p) -> epath.Path:
  """Creates the local folder ``p`` and its parents; nothing for a URI (an object store's
  "folders" are name prefixes, and gcsfs would create a missing bucket instead of failing)."""
  p = path(p)
  if not is_remote(p):
    p.mkdir(parents=True, exist_ok=True)
  return p


@contextlib.contextmanager
def replaced(p, folder: bool = False):
  """Writes ``p`` whole or not at all: yields a path beside it (an empty new folder if
  ``folder``) to write, which is renamed onto ``p`` in one step when the block ends, and
  removed when it raises (a full disk, Ctrl-C). A failure leaves ``p`` as it was and no
  partial file. An object store replaces an object only once it is complete, so a URI is
  yielded as it is (not for folders)."""
  p = path(p)
  if is_remote(p) and not folder:
    yield p
    return
  partial = p.with_name(f'.{p.name}.{os.getpid()}.partial')
  if folder:
    partial.mkdir()
  try:
    yield partial
    os.replace(partial, p)
  finally:
    if folder:
      shutil.rmtree(partial, ignore_errors=True)
    else:
      partial.unlink(missing_ok=True)


def write_text(p, text: str) -> None:
  """Writes the file ``p`` whole or not at all (``replaced``)."""
  with replaced(p) as partial:
    partial.write_text(text)


def write_bytes(p, data: bytes) -> None:
  """Writes the file ``p`` whole or not at all (``replaced``)."""
  with replaced(p) as partial:
    partial.write_bytes(data)


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error``, or one that it was raised from or while handling, is a full disk or
  quota (orbax and tensorstore wrap the OSError, or keep only its message)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in ('No space left on device', 'Disk quota exceeded')):
      return True
    error = error.__cause__ or error.__context__
  return False
