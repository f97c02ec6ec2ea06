"""What a run reports: WORKDIR/metrics.jsonl (one JSON object per logged step), TensorBoard
event files in WORKDIR/tensorboard/ (the same values, and the sample grids), and a console
line with progress and ETA.

Only process 0 writes; on other processes every method does nothing. On resume from step S the
rows after S (written by the interrupted run after its last checkpoint) are dropped, so the
file ends up as an uninterrupted run would have written it.

The workdir may be a bucket (gs://...): metrics.jsonl is then rewritten whole at each row
(objects cannot be appended to), and TensorBoard events need tensorboardX's client for the
bucket (google-cloud-storage for gs://); without it they are skipped, with a notice.
"""
import json
import sys
import time

import jax

from flowpp_jax.runtime import fileio

# tensorboardX writes these URI schemes itself when the module-level flag of its record_writer
# is true (the client package imported); any other URI it would treat as a local path.
_TENSORBOARD_CLIENTS = {'gs': ('GCS_ENABLED', 'google-cloud-storage'),
                        's3': ('S3_ENABLED', 'boto3')}


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def _rows(text: str) -> list:
  """The lines of metrics.jsonl, less a last one that a full disk or a kill cut short."""
  lines = [line for line in text.splitlines() if line.strip()]
  if lines:
    try:
      json.loads(lines[-1])
    except json.JSONDecodeError:
      lines.pop()
  return lines


class Reporter:
  """Writes metrics rows; ``resume_step`` is the step the run starts from."""

  def __init__(self, workdir, *, total_steps: int, resume_step: int = 0, stream=sys.stdout):
    self.active = jax.process_index() == 0
    self.total_steps = total_steps
    self.stream = stream
    self._window = (time.perf_counter(), resume_step)
    self._run_start = self._window
    if not self.active:
      return
    self.path = fileio.path(workdir) / 'metrics.jsonl'
    self._remote = fileio.is_remote(self.path)
    self._lines = []  # The file's lines, kept to rewrite a remote file (no append there).
    if self.path.exists():
      self._lines = [line + '\n' for line in _rows(self.path.read_text())
                     if json.loads(line)['step'] <= resume_step]
      fileio.write_text(self.path, ''.join(self._lines))
    self._tb = self._summary_writer(fileio.path(workdir) / 'tensorboard', resume_step)

  def _summary_writer(self, logdir, resume_step: int):
    """A tensorboardX SummaryWriter for ``logdir``, or None (with a notice) when tensorboardX
    cannot write there."""
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    kind = fileio.scheme(logdir)
    if kind is not None:
      flag, package = _TENSORBOARD_CLIENTS.get(kind, (None, None))
      if flag is None or not getattr(record_writer, flag, False):
        how = f'pip install {package}' if package else f'no {kind}:// support in tensorboardX'
        self.say(f'note: no TensorBoard events in {logdir} ({how}); metrics.jsonl has every '
                 'logged value')
        return None
    # purge_step hides the interrupted run's events after the resumed step.
    return SummaryWriter(str(logdir), purge_step=resume_step or None)

  def start_clock(self, step: int) -> None:
    """Throughput and ETA count from here (call after the first step has compiled)."""
    self._window = self._run_start = (time.perf_counter(), step)

  def rates(self, step: int, batch_size: int) -> dict:
    """steps/s and examples/s since the previous call (starts a new window)."""
    now = time.perf_counter()
    then, then_step = self._window
    self._window = (now, step)
    steps_per_s = (step - then_step) / max(now - then, 1e-9)
    return {'steps_per_s': steps_per_s, 'examples_per_s': steps_per_s * batch_size}

  def eta(self, step: int) -> str:
    start, start_step = self._run_start
    done = step - start_step
    if done <= 0:
      return '?'
    return format_duration((time.perf_counter() - start) / done * (self.total_steps - step))

  def write(self, step: int, row: dict) -> None:
    """Appends {'step': step, **row} to metrics.jsonl and TensorBoard."""
    if not self.active:
      return
    row = {'step': int(step), **{k: float(v) for k, v in row.items()}}
    line = json.dumps(row) + '\n'
    if self._remote:
      self._lines.append(line)
      fileio.write_text(self.path, ''.join(self._lines))
    else:
      with self.path.open('a') as f:
        f.write(line)
    if self._tb is None:
      return
    for key, value in row.items():
      if key != 'step':
        self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def image(self, tag: str, step: int, image) -> None:
    """A uint8 [H, W, C] image (a sample grid) to TensorBoard's Images tab."""
    if self.active and self._tb is not None:
      self._tb.add_image(tag, image, step, dataformats='HWC')
      self._tb.flush()

  def say(self, message: str) -> None:
    if self.active:
      print(message, file=self.stream, flush=True)

  def close(self) -> None:
    if self.active and self._tb is not None:
      self._tb.close()
