"""The LoRA kernel (kernels/lora_add.c): build once per machine, load, call.

A layer's LoRA at decode sizes is a few hundred thousand multiply-adds, which the torch path
spreads over ~5 calls whose overhead is most of the cost. The kernel does one layer in one call,
and in a fixed summation order per row, so an adapter's answer is the same whatever else is in
its batch.

It is plain C with OpenMP, called through ctypes (no torch headers: it compiles in about a
second with the system's C compiler; its OpenMP calls land in the libgomp torch has loaded, so
it shares torch's threads). `make setup` and the images build it (`python -m
services.inference.lora_kernel`); an engine that finds no build for this source builds it at
start when a compiler is there, and otherwise runs the torch path (`available()` is False, and
the engine reports its LoRA path as `fused`, not `kernel`). One shared object serves every x86
CPU: GCC's target clones pick the AVX-512, AVX2 or baseline version when it loads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "kernels" / "lora_add.c"
FLAGS = ("-O3", "-shared", "-fPIC", "-std=gnu11", "-fno-math-errno", "-fopenmp")
LANES = 16               # kernels/lora_add.c: a_t's last dimension is a multiple of this


def cache_dir() -> Path:
    root = os.environ.get("FINETUNE_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "finetune", "kernels")
    return Path(root)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_path() -> Path:
    """Where this source's build lives: named by the source and the flags, so a changed kernel
    is never answered by a stale build (and an image's runtime, which has no compiler, finds
    what its build stage compiled)."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    return cache_dir() / f"lora_add-{digest.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the kernel into the cache unless it is there (atomic: a concurrent build never
    loads half a file)."""
    target = library_path()
    if target.exists() and not force:
        return target
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) to build the LoRA kernel")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, "-o", str(partial), str(SOURCE)], check=True,
                       capture_output=True, text=True)
        partial.replace(target)
    log.info("built the LoRA kernel: %s", target)
    return target


class LoraKernel:
    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        fn = lib.lora_add
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        fn.argtypes = [p, i32, i64, p, i32, i64, p, p, i64, p, i64, i64, i64, i64, p, p, i32,
                       ctypes.c_float]
        fn.restype = ctypes.c_int
        self._fn = fn
        self.path = path

    def add(self, y: torch.Tensor, x: torch.Tensor, rows: tuple, layer: tuple,
            scale: float) -> bool:
        """y[t] += scale * x[t] @ A @ B for the step's rows (see kernels/lora_add.c); False
        when the kernel cannot take these tensors (the caller uses the torch path).

        `rows`: (slot of each row, the rows sorted by slot, how many), as int64 tensors'
        addresses (StepPlan.kernel_rows). `layer`: the layer's weights as the kernel reads
        them (FusedLoraWeights.kernel_layer), made once per adapter load."""
        if not supports(y, x):
            return False
        status = self._fn(y.data_ptr(), y.dtype is torch.bfloat16, y.stride(0),
                          x.data_ptr(), x.dtype is torch.bfloat16, x.stride(0), *rows, *layer,
                          scale)
        return status == 0


def layer_arguments(a_t: torch.Tensor, slices: int, rank: int, b_pointers: ctypes.Array,
                    out_sizes: ctypes.Array) -> tuple:
    """A layer's weights as lora_add reads them: (a_t, in, sr, slices, rank, b, out sizes,
    weights in bf16)."""
    return (a_t.data_ptr(), a_t.shape[1], a_t.shape[2], slices, rank, b_pointers, out_sizes,
            a_t.dtype is torch.bfloat16)


def weight_dtype(stacked: torch.dtype) -> torch.dtype:
    """The kernel keeps bf16 weights as they are (widening them is exact, and at decode the
    bytes read are the cost), anything else in float32."""
    return torch.bfloat16 if stacked is torch.bfloat16 else torch.float32


def padded(columns: int) -> int:
    """a_t's last dimension for slices x rank columns."""
    return -(-columns // LANES) * LANES


def supports(y: torch.Tensor, x: torch.Tensor) -> bool:
    """The kernel reads float32 or bf16 rows with unit column stride, on the CPU."""
    ok = (torch.float32, torch.bfloat16)
    return (y.dtype in ok and x.dtype in ok and y.device.type == "cpu"
            and x.device.type == "cpu" and y.stride(1) == 1 and x.stride(1) == 1)


@lru_cache(maxsize=1)
def load() -> LoraKernel | None:
    """The kernel, built first if this source has no build here; None when it cannot be had
    (no compiler, a failed build, FINETUNE_LORA_KERNEL=0), with the reason logged."""
    if os.environ.get("FINETUNE_LORA_KERNEL", "1") == "0":
        return None
    try:
        return LoraKernel(build())
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("the LoRA kernel is unavailable, using the torch path: %s", detail)
        return None


def available() -> bool:
    return load() is not None


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build(force="--force" in sys.argv[1:]))
