"""Published dense peak FLOP/s per device (a chip; a TensorCore on TPU v2 and v3), for model
FLOPs utilisation (MFU).

Figures are the vendors' datasheet numbers without structured sparsity (NVIDIA lists
"with sparsity" figures: the dense ones are half). ``float32`` means what XLA runs a float32
matmul or convolution as under JAX's default matmul precision (see
https://docs.jax.dev/en/latest/201/precision.html): on TPUs a single bfloat16 MXU pass, so the
bfloat16 peak; on A100/H100/H200 TF32 tensor cores, so the TF32 dense peak (not the much lower
non-tensor FP32 rate, given in the comments). With --jax_default_matmul_precision=highest the
float32 figures overstate what the chip can do and MFU comes out too low.

Devices are matched on ``jax.devices()[0].device_kind``; anything not listed (CPUs, other GPUs,
GH200, TPU v4 lite, ...) has no peak, and its MFU is not applicable rather than guessed.
"""
import dataclasses
import re

TERA = 1e12
_TPU_F32 = 'float32 as one bfloat16 MXU pass (JAX default precision)'
_GPU_F32 = 'float32 as TF32 tensor cores (JAX default precision)'


@dataclasses.dataclass(frozen=True)
class Chip:
  """One chip's dense peak FLOP/s per compute dtype, and how float32 is counted."""
  name: str
  bfloat16: float
  float32: float
  float32_basis: str


# (pattern on the lower-cased device_kind, chip). First match wins: the specific GPU variants
# come before their family.
_CHIPS = (
    # TPU device_kind strings: 'TPU v2', 'TPU v3', 'TPU v4', 'TPU v5 lite' (v5e), 'TPU v5' /
    # 'TPU v5p', 'TPU v6 lite'. JAX's devices are chips, except on v2 and v3: TensorCores, two
    # per chip (45 and 123 TFLOP/s per chip).
    (r'tpu v2', Chip('TPU v2 TensorCore', 22.5 * TERA, 22.5 * TERA, _TPU_F32)),
    (r'tpu v3', Chip('TPU v3 TensorCore', 61.5 * TERA, 61.5 * TERA, _TPU_F32)),
    (r'tpu v4', Chip('TPU v4', 275 * TERA, 275 * TERA, _TPU_F32)),
    (r'tpu v5 ?(lite|e)', Chip('TPU v5e', 197 * TERA, 197 * TERA, _TPU_F32)),
    (r'tpu v5p?', Chip('TPU v5p', 459 * TERA, 459 * TERA, _TPU_F32)),
    (r'tpu v6 ?(lite|e)', Chip('TPU v6e', 918 * TERA, 918 * TERA, _TPU_F32)),
    # A100, SXM4 and PCIe alike (40 and 80 GB): BF16 312, TF32 156 (FP32 non-tensor 19.5).
    (r'.*\ba100\b.*', Chip('A100', 312 * TERA, 156 * TERA, _GPU_F32)),
    # H100 PCIe: BF16 1513 sparse, TF32 756 sparse (FP32 51).
    (r'.*\bh100\b.*pcie.*', Chip('H100 PCIe', 756.5 * TERA, 378 * TERA, _GPU_F32)),
    # H100 NVL and H200 NVL: BF16 1671 sparse, TF32 835 sparse (FP32 60).
    (r'.*\bh[12]00\b.*nvl.*', Chip('H100/H200 NVL', 835.5 * TERA, 417.5 * TERA, _GPU_F32)),
    # H100 SXM ('NVIDIA H100 80GB HBM3') and H200 SXM: BF16 1979 sparse, TF32 989 sparse
    # (FP32 67).
    (r'.*\bh[12]00\b.*', Chip('H100/H200 SXM', 989.5 * TERA, 494.5 * TERA, _GPU_F32)),
)


def lookup(device_kind: str):
  """The Chip a ``device_kind`` names, or None when it is not listed."""
  kind = device_kind.strip().lower()
  return next((chip for pattern, chip in _CHIPS if re.fullmatch(pattern, kind)), None)


def peak_flops(device_kind: str, compute_dtype: str):
  """Dense peak FLOP/s of one chip of ``device_kind`` at ``compute_dtype`` ('float32' or
  'bfloat16'; see the module docstring for float32), or None when unknown."""
  chip = lookup(device_kind)
  return None if chip is None else {'bfloat16': chip.bfloat16,
                                    'float32': chip.float32}.get(compute_dtype)


def basis(device_kind: str, compute_dtype: str):
  """Which published figure peak_flops gives, in words, or None when unknown."""
  if peak_flops(device_kind, compute_dtype) is None:
    return None
  chip = lookup(device_kind)
  how = chip.float32_basis if compute_dtype == 'float32' else compute_dtype
  return f'{chip.name}, {how}, dense'


def mfu(flops_per_s: float, device_kind: str, compute_dtype: str, device_count: int):
  """Achieved FLOP/s (all devices together) / (peak per chip x chips), or None when the
  device's peak is unknown."""
  peak = peak_flops(device_kind, compute_dtype)
  return None if peak is None else flops_per_s / (peak * device_count)
