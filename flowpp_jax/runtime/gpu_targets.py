"""NVIDIA GPU machines by type (h100-8: eight H100 SXM 80GB on one host, as the paper's eight
GPUs), and compile-only devices for them on any machine with jax's CUDA plugin and its CUDA
libraries (``jax[cuda12]``), no GPU needed: XLA:GPU compiles from a description of the GPU
(a GpuTargetConfig) instead of asking a driver for one.

The descriptions hold what the compiler plans with (streaming multiprocessors, shared
memory, L2, memory size and bandwidth, compute capability), from NVIDIA's datasheets and
``cudaGetDeviceProperties`` on the cards; the CUDA and cuDNN versions are those jax[cuda12]
installs. Peak FLOP/s are runtime/accelerators.py's.

A program's memory must fit in the pool JAX takes of the card, not in the whole card: 75% by
default, 90% as launch/gpu_local.sh sets XLA_PYTHON_CLIENT_MEM_FRACTION (the rest stays for
cuDNN, cuBLAS and NCCL). A program is held against the launch script's 90%, or against the
fraction XLA_PYTHON_CLIENT_MEM_FRACTION gives where it is set.
"""
import dataclasses
import importlib.util
import os
import re

from flowpp_jax.runtime import accelerators

INSTALL_HINT = "pip install 'jax[cuda12]' (the CUDA plugin and its libraries; no GPU needed)"
LAUNCH_MEMORY_FRACTION = 0.9  # of a GPU's memory, JAX's pool as launch/gpu_local.sh sets it


@dataclasses.dataclass(frozen=True)
class Gpu:
  """One GPU model as XLA:GPU's target description needs it."""
  name: str                   # the type's prefix: 'h100'
  device_kind: str            # jax.devices()[0].device_kind on it
  memory_bytes: int           # as the driver reports it (cudaDeviceProp.totalGlobalMem)
  memory_bytes_per_s: float   # HBM bandwidth (datasheet)
  compute_capability: tuple   # (major, minor)
  sm_count: int
  clock_ghz: float
  l2_bytes: int
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int

  def target_config(self) -> str:
    """XLA's GpuTargetConfig for this GPU, as text."""
    major, minor = self.compute_capability
    return '\n'.join([
        'gpu_device_info {',
        '  threads_per_block_limit: 1024', '  threads_per_warp: 32',
        '  shared_memory_per_block: 49152',
        f'  shared_memory_per_core: {self.shared_memory_per_sm}',
        '  threads_per_core_limit: 2048', f'  core_count: {self.sm_count}',
        '  fpus_per_core: 128', '  block_dim_limit_x: 2147483647',
        '  block_dim_limit_y: 65535', '  block_dim_limit_z: 65535',
        f'  memory_bandwidth: {int(self.memory_bytes_per_s)}',
        f'  l2_cache_size: {self.l2_bytes}', f'  clock_rate_ghz: {self.clock_ghz}',
        f'  device_memory_size: {self.memory_bytes}',
        f'  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}',
        f'  cuda_compute_capability {{ major: {major} minor: {minor} }}',
        '  registers_per_core_limit: 65536', '  registers_per_block_limit: 65536',
        '}',
        'platform_name: "CUDA"',
        'dnn_version_info { major: 9 minor: 8 }',
        'runtime_version { major: 12 minor: 9 }',
        f'device_description_str: "{self.device_kind}"',
    ])


MIB = 2**20
GPUS = {g.name: g for g in (
    Gpu('a100', 'NVIDIA A100-SXM4-80GB', 85_167_243_264, 2039e9, (8, 0), 108, 1.41, 40 * MIB,
        167_936, 166_912),
    Gpu('h100', 'NVIDIA H100 80GB HBM3', 84_929_347_584, 3352e9, (9, 0), 132, 1.98, 50 * MIB,
        233_472, 232_448),
)}
_PATTERN = re.compile(r'(a100|h100)-(\d+)')


@dataclasses.dataclass(frozen=True)
class Machine:
  """``gpus`` GPUs of one model on one host, as a pre-flight target (the interface of
  tpu_slices.Slice)."""
  accelerator_type: str
  gpu: Gpu
  gpus: int
  memory_fraction: float = LAUNCH_MEMORY_FRACTION  # of the card, JAX's pool

  platform = 'gpu'
  hosts = 1

  @property
  def chips(self) -> int:
    return self.gpus

  @property
  def devices(self) -> int:
    return self.gpus

  @property
  def topology(self) -> str:
    """XLA:GPU's topology: slices x hosts x devices per host."""
    return f'1x1x{self.gpus}'

  @property
  def device_kind(self) -> str:
    return self.gpu.device_kind

  @property
  def device_memory_bytes(self) -> float:
    return self.gpu.memory_bytes

  @property
  def available_memory_bytes(self) -> float:
    """What a program may use: JAX's pool (see the module docstring)."""
    return self.gpu.memory_bytes * self.memory_fraction

  @property
  def peak_flops_per_device(self) -> float:
    """Dense peak at JAX's default float32 precision (TF32: accelerators.py)."""
    return accelerators.peak_flops(self.gpu.device_kind, 'float32')

  @property
  def hbm_bytes_per_s_per_device(self) -> float:
    return self.gpu.memory_bytes_per_s

  @staticmethod
  def compiler() -> str:
    return f'jax-cuda12-plugin {_version("jax-cuda12-plugin")}'

  @staticmethod
  def missing_compiler() -> str:
    """Why it cannot compile here, or '' when it can."""
    if importlib.util.find_spec('jax_cuda12_plugin') is None:
      return f"--target compiles with jax's CUDA plugin, which is not installed: {INSTALL_HINT}"
    return ''

  def prepare_environment(self) -> None:
    """Nothing to set: the CUDA plugin looks for no GPU until asked to run."""

  def compile_devices(self) -> list:
    """The machine's devices, for compiling only (nothing runs on them)."""
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    description = topologies.get_topology_desc(
        topology_name=self.gpu.name, platform='cuda', target_config=self.gpu.target_config(),
        topology=self.topology)
    return sorted(description.devices, key=lambda d: d.id)


def known_types() -> str:
  return 'a100-N, h100-N (N GPUs on one host: 1, 2, 4 or 8)'


def is_gpu_type(accelerator_type: str) -> bool:
  """Whether the type names a GPU machine (its prefix is a GPU's), well formed or not."""
  return accelerator_type.strip().lower().split('-')[0] in GPUS


def parse(accelerator_type: str) -> Machine:
  """The Machine an accelerator type names ('h100-8'); ValueError for others."""
  match = _PATTERN.fullmatch(accelerator_type.strip().lower())
  gpus = int(match.group(2)) if match else 0
  if gpus not in (1, 2, 4, 8):
    raise ValueError(f'unknown GPU machine {accelerator_type!r}: expected {known_types()}')
  fraction = os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION') or str(LAUNCH_MEMORY_FRACTION)
  try:
    value = float(fraction)
  except ValueError:
    value = -1.0
  if not 0 < value <= 1:
    raise ValueError(f'XLA_PYTHON_CLIENT_MEM_FRACTION={fraction!r} is not a fraction of the '
                     'GPU memory: set it between 0 and 1, or unset it')
  return Machine(accelerator_type.strip().lower(), GPUS[match.group(1)], gpus, value)


def _version(distribution: str):
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(distribution)
  except Exception:  # pylint: disable=broad-except
    return None
