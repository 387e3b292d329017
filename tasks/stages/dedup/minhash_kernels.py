"""MinHash signatures from shingle hashes: min over a document's shingles of (a*x + b) mod 2^64, per permutation,
in numpy on the CPU and in torch on a CUDA device, bit for bit the same (no polars here: the device image has none).

torch has no unsigned 64-bit arithmetic, so the shingle hashes and the permutations travel as int64 with the same
bits: a product and a sum wrap modulo 2^64 exactly as uint64 ones do. Only the order differs, so the sign bit is
flipped before taking the minimum (signed order of the flipped values is the unsigned order of the originals) and
flipped back after. The polars shingling stays on the CPU (its hash functions exist only there); what moves to the
device is the (shingles x permutations) products and their per-document minimum.
"""

from __future__ import annotations

import numpy as np

SEED = 0x5EED_D00D
SIGN_BIT = -(2**63)
ELEMENTS_AT_ONCE = 2**26  # shingles x permutations per step: 512 MB of int64 products on the device
NVIDIA_DRIVER = ("/proc/driver/nvidia/version", "/dev/nvidiactl")  # one exists where the driver is loaded


def cuda_present() -> bool:
    """Whether torch is installed and sees a CUDA device (dedup's `device = "auto"`). Without the NVIDIA driver
    there is no CUDA device, and importing torch only to learn that would cost a dedup worker about 1.3 s and
    300 MB, so torch is asked only where the driver is, or where it is imported already."""
    import importlib.util
    import sys
    from pathlib import Path

    if "torch" not in sys.modules and not any(Path(p).exists() for p in NVIDIA_DRIVER):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()



def permutations(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The uint64 multipliers (odd) and offsets of `n` hash permutations, the same in every process."""
    rng = np.random.default_rng(SEED)
    a = rng.integers(1, np.iinfo(np.uint64).max, size=n, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64)
    return a, b


def on_cpu(ids: np.ndarray, x: np.ndarray, rows: int, num_perm: int) -> np.ndarray:
    """(rows, num_perm) uint64 signatures. `ids` is the document (0..rows-1) of each shingle hash in `x`, sorted."""
    a, b = permutations(num_perm)
    sig = np.full((rows, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    if x.size == 0:  # an empty shard (e.g. every row of a file quarantined upstream)
        return sig
    x = x.astype(np.uint64, copy=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    with np.errstate(over="ignore"):
        for i in range(num_perm):
            sig[ids[starts], i] = np.minimum.reduceat(x * a[i] + b[i], starts)
    return sig


def on_device(ids: np.ndarray, x: np.ndarray, rows: int, num_perm: int, dev) -> np.ndarray:
    """`on_cpu`'s signatures computed by torch on `dev` (any order of `ids` works here)."""
    import torch

    a, b = permutations(num_perm)
    if x.size == 0:
        return np.full((rows, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)

    def tensor(values: np.ndarray, dtype) -> torch.Tensor:  # polars hands out read-only arrays: copy those
        return torch.from_numpy(np.require(values, dtype, ["C", "W"]).view(np.int64)).to(dev)

    shingles, doc = tensor(x, np.uint64), tensor(ids, np.int64)
    mult, add = tensor(a, np.uint64), tensor(b, np.uint64)
    out = torch.full((rows, num_perm), np.iinfo(np.int64).max, dtype=torch.int64, device=dev)  # flipped uint64 max
    step = max(1, min(num_perm, ELEMENTS_AT_ONCE // shingles.numel()))
    for p in range(0, num_perm, step):
        q = min(num_perm, p + step)
        values = (shingles[:, None] * mult[None, p:q] + add[None, p:q]) ^ SIGN_BIT
        out[:, p:q] = out[:, p:q].scatter_reduce(0, doc[:, None].expand(-1, q - p), values, reduce="amin",
                                                 include_self=True)
    return (out ^ SIGN_BIT).cpu().numpy().view(np.uint64)
