"""What a run reports: WORKDIR/metrics.jsonl (one JSON object per logged step), TensorBoard
event files in WORKDIR/tensorboard/, and a console line with progress and ETA.

Only process 0 writes; on other processes every method does nothing. On resume from step S the
rows after S (written by the interrupted run after its last checkpoint) are dropped, so the
file ends up as an uninterrupted run would have written it.
"""
import json
import pathlib
import sys
import time

import jax


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


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
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    if self.path.exists():
      rows = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)['step'] <= resume_step]
      self.path.write_text(''.join(row + '\n' for row in rows))
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    # purge_step hides the interrupted run's events after the resumed step.
    self._tb = SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'),
                             purge_step=resume_step or None)

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
    with self.path.open('a') as f:
      f.write(json.dumps(row) + '\n')
    for key, value in row.items():
      if key != 'step':
        self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def say(self, message: str) -> None:
    if self.active:
      print(message, file=self.stream, flush=True)

  def close(self) -> None:
    if self.active:
      self._tb.close()
