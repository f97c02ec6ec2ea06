"""Cloud TPU slices by accelerator type (v4-8, v5litepod-16, ...), and compile-only devices
for them on any machine with libtpu installed (the pre-flight of ``bench --target``).

An accelerator type names a generation and a count: TensorCores on v2, v3, v4 and v5p (two
per chip), chips on v5e (``v5litepod``) and v6e. JAX sees one device per TensorCore on v2
and v3, and one per chip elsewhere (v4 and v5p run a chip's two cores as one "megacore").
The slice's shape follows Cloud TPU's topologies: 2D tori for v2, v3, v5e and v6e, 3D for v4
and v5p, grown by doubling the smallest axis. Hosts hold 4 chips, except single-host v5e and
v6e slices of up to 8 chips.

Per-chip figures are the vendor's datasheet values (cloud.google.com/tpu/docs/<generation>;
v2 from Jouppi et al., "A Domain Specific Supercomputer for Training Deep Neural Networks",
CACM 2020): HBM capacity and bandwidth; the peak FLOP/s are runtime/accelerators.py's. HBM
comes in binary sizes: v5e's and v6e's "16 GB" and "32 GB" are GiB (the TPU compiler leaves
programs 15.75 GiB of a v5e).
"""
import dataclasses
import importlib.util
import os
import re

from flowpp_jax.runtime import accelerators

GIB = 2**30
GB = 1e9

INSTALL_HINT = "pip install 'flowpp-jax[tpu]' (or -e '.[tpu]' in a checkout)"


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation as Cloud TPU sells it."""
  name: str                 # the accelerator type's prefix: 'v4', 'v5litepod'
  topology_prefix: str      # libtpu's topology names: 'v4:2x2x1'
  device_kind: str          # jax.devices()[0].device_kind on it
  counts_cores: bool        # the type's number counts TensorCores (2 per chip), else chips
  devices_per_chip: int     # JAX devices per chip: 2 on v2/v3, 1 with megacore or one core
  dims: int                 # 2D or 3D topology
  hbm_bytes_per_chip: float
  hbm_bytes_per_s_per_chip: float
  single_host_chips: int    # the most chips one host holds

  @property
  def chip_config(self) -> str:
    """libtpu's chip configuration: one device per chip on v4/v5p ('megacore')."""
    return 'megacore' if self.counts_cores and self.devices_per_chip == 1 else 'default'


GENERATIONS = {g.name: g for g in (
    Generation('v2', 'v2', 'TPU v2', True, 2, 2, 16 * GIB, 700 * GB, 4),
    Generation('v3', 'v3', 'TPU v3', True, 2, 2, 32 * GIB, 900 * GB, 4),
    Generation('v4', 'v4', 'TPU v4', True, 1, 3, 32 * GIB, 1200 * GB, 4),
    Generation('v5litepod', 'v5e', 'TPU v5 lite', False, 1, 2, 16 * GIB, 819 * GB, 8),
    Generation('v5p', 'v5p', 'TPU v5', True, 1, 3, 95 * GB, 2765 * GB, 4),
    Generation('v6e', 'v6e', 'TPU v6 lite', False, 1, 2, 32 * GIB, 1640 * GB, 8),
)}
_MAX_CHIPS = 8192


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice of one accelerator type."""
  accelerator_type: str
  generation: Generation
  chips: int
  shape: tuple  # chips along each axis of the topology

  @property
  def devices(self) -> int:
    """JAX devices in the slice (TensorCores on v2/v3, chips elsewhere)."""
    return self.chips * self.generation.devices_per_chip

  @property
  def chips_per_host(self) -> int:
    single = self.generation.single_host_chips
    return self.chips if self.chips <= single else 4

  @property
  def hosts(self) -> int:
    return self.chips // self.chips_per_host

  @property
  def topology(self) -> str:
    return f'{self.generation.topology_prefix}:' + 'x'.join(map(str, self.shape))

  @property
  def host_bounds(self) -> tuple:
    """Chips per host along each topology axis, as libtpu takes them (3 axes)."""
    return {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}[self.chips_per_host]

  @property
  def device_memory_bytes(self) -> float:
    """HBM per JAX device: per chip, or per TensorCore on v2/v3."""
    return self.generation.hbm_bytes_per_chip / self.generation.devices_per_chip

  @property
  def peak_flops_per_device(self) -> float:
    """Dense bfloat16 peak of a device (runtime/accelerators.py's figure), at which a TPU
    also runs float32 products at JAX's default precision."""
    return accelerators.peak_flops(self.generation.device_kind, 'bfloat16')

  @property
  def hbm_bytes_per_s_per_device(self) -> float:
    return self.generation.hbm_bytes_per_s_per_chip / self.generation.devices_per_chip

  platform = 'tpu'

  @property
  def device_kind(self) -> str:
    return self.generation.device_kind

  @property
  def available_memory_bytes(self) -> float:
    """What a program may use: the TPU compiler refuses one that needs more (slightly less
    than the HBM, e.g. 15.75 GiB of a v5e's 16)."""
    return self.device_memory_bytes

  @staticmethod
  def compiler() -> str:
    try:
      from importlib import metadata  # pylint: disable=g-import-not-at-top
      return f'libtpu {metadata.version("libtpu")}'
    except Exception:  # pylint: disable=broad-except
      return 'libtpu'

  @staticmethod
  def missing_compiler() -> str:
    """Why it cannot compile here, or '' when it can."""
    if not libtpu_installed():
      return f'--target compiles with libtpu, which is not installed: {INSTALL_HINT}'
    return ''

  def prepare_environment(self) -> None:
    """For a command's entry point, before libtpu loads: the worker settings a Cloud TPU
    VM's metadata server would give, so that libtpu does not look for one (and print a page
    of warnings) on a machine that only compiles; and no lock on the TPU chips, which
    compiling does not open (libtpu otherwise refuses a second process). Settings the user
    made are kept."""
    for name, value in (('TPU_SKIP_MDS_QUERY', '1'), ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1'),
                        ('TPU_ACCELERATOR_TYPE', self.accelerator_type),
                        ('TPU_WORKER_ID', '0'), ('TPU_WORKER_HOSTNAMES', 'localhost')):
      os.environ.setdefault(name, value)

  def compile_devices(self) -> list:
    """The slice's devices, for compiling only (nothing runs on them), in device-id order;
    each has a ``process_index``: its host. Needs libtpu."""
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    description = topologies.get_topology_desc(
        platform='tpu', topology_name=self.topology,
        chip_config_name=self.generation.chip_config, chips_per_host_bounds=self.host_bounds,
        num_slices=1)
    devices = sorted(description.devices, key=lambda d: d.id)
    if len(devices) != self.devices:
      raise RuntimeError(f'libtpu made {len(devices)} devices for {self.accelerator_type} '
                         f'({self.topology}), expected {self.devices}')
    return devices


def _shape(chips: int, dims: int) -> tuple:
  """Cloud TPU's topology of ``chips`` (a power of two): from the smallest slice, the
  smallest axis doubles (the last of equals first), e.g. 3D 2x2x1, 2x2x2, 2x2x4, 2x4x4."""
  shape = [1] * dims
  while shape[0] * shape[1] < min(chips, 4):  # 1x1, then 2x2 (x1): the single-host slices
    shape[0 if shape[0] == shape[1] else 1] *= 2
  while _prod(shape) < chips:
    smallest = min(shape)
    shape[max(i for i, n in enumerate(shape) if n == smallest)] *= 2
  return tuple(shape)


def _prod(values) -> int:
  out = 1
  for v in values:
    out *= v
  return out


def known_types() -> str:
  """The accelerator types taken, in words, for error messages."""
  return ('v2-N, v3-N, v4-N, v5p-N (N TensorCores: 8, 16, 32, ...), v5litepod-N, v6e-N '
          '(N chips: 1, 4, 8, 16, ...)')


def parse(accelerator_type: str) -> Slice:
  """The Slice an accelerator type names ('v4-8', 'v5litepod-16', 'v6e-8'); ValueError for
  one Cloud TPU does not sell as a power-of-two slice."""
  match = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', accelerator_type.strip().lower())
  generation = GENERATIONS.get(match.group(1)) if match else None
  if generation is None:
    raise ValueError(f'unknown TPU accelerator type {accelerator_type!r}: expected one of '
                     f'{known_types()}')
  count = int(match.group(2))
  chips = count // 2 if generation.counts_cores else count
  smallest = 4 if generation.counts_cores else 1
  if (count < (8 if generation.counts_cores else 1) or chips & (chips - 1) or chips < smallest
      or chips > _MAX_CHIPS or (not generation.counts_cores and chips == 2)):
    raise ValueError(f'unknown TPU slice {accelerator_type!r}: {known_types()}')
  return Slice(accelerator_type.strip().lower(), generation, chips,
               _shape(chips, generation.dims))


def libtpu_installed() -> bool:
  """Whether the TPU compiler (the libtpu package) can be loaded."""
  return importlib.util.find_spec('libtpu') is not None
