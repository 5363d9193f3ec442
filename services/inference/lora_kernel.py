"""The LoRA kernel (kernels/lora_add.c): build once per machine, load, call.

A layer's LoRA at decode sizes is a few hundred thousand multiply-adds, which the torch path
spreads over ~5 calls whose overhead is most of the cost. The kernel does one layer in one call,
and in a fixed summation order per row, so an adapter's answer is the same whatever else is in
its batch.

It is plain C with OpenMP, called through ctypes (no torch headers: it compiles in a few
seconds with the system's C compiler; its OpenMP calls, for large steps only, land in the
libgomp torch has loaded, so it shares torch's threads). `make setup` and the images build it
(`python -m services.inference.lora_kernel`); an engine that finds no build for this source
builds it at start when a compiler is there, and otherwise runs the torch path (`available()`
is False, and the engine reports its LoRA path as `fused`, not `kernel`). One shared object
serves every x86 CPU: it holds an AVX-512, an AVX2 and a baseline variant, each with its
registers' vector width, and picks one when it loads (`LoraKernel.isa`).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "kernels" / "lora_add.c"
FLAGS = ("-O3", "-fPIC", "-std=gnu11", "-fno-math-errno", "-fopenmp")
# One variant per instruction set, each with its registers' vector width; the dispatcher in the
# same source picks one when the library loads (lora_add_isa says which).
X86_VARIANTS = (("avx512", 16, ("-march=x86-64-v4",)), ("avx2", 8, ("-march=x86-64-v3",)),
                ("baseline", 4, ()))
PORTABLE_VARIANTS = (("baseline", 4, ()),)
ISAS = tuple(name for name, _, _ in X86_VARIANTS)


WEIGHT_DTYPES = ROW_DTYPES = (torch.float32, torch.bfloat16)

# a_t's last dimension is padded to a multiple of the widest variant's vector (and so of every
# variant's: kernels/lora_add.c checks sr % LANES).
LANES = 16


def _variants() -> tuple:
    return X86_VARIANTS if platform.machine() in ("x86_64", "AMD64") else PORTABLE_VARIANTS


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
    digest.update(repr((FLAGS, _variants())).encode())
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
        objects = []
        for isa, lanes, flags in _variants():
            objects.append(Path(tmp) / f"{isa}.o")
            _compile(compiler, [*flags, f"-DNAME=lora_add_{isa}", f"-DLANES={lanes}"],
                     objects[-1])
        objects.append(Path(tmp) / "dispatch.o")
        _compile(compiler, ["-DDISPATCH"], objects[-1])
        partial = Path(tmp) / target.name
        subprocess.run([compiler, "-shared", "-fopenmp", "-o", str(partial),
                        *map(str, objects)], check=True, capture_output=True, text=True)
        partial.replace(target)
    log.info("built the LoRA kernel: %s", target)
    return target


def _compile(compiler: str, defines: list[str], output: Path) -> None:
    subprocess.run([compiler, *FLAGS, *defines, "-c", "-o", str(output), str(SOURCE)],
                   check=True, capture_output=True, text=True)


class LoraKernel:
    """The built library; `isa` names a variant to call instead of the one the CPU picks
    (tests and benchmarks compare them)."""

    def __init__(self, path: Path, isa: str | None = None):
        lib = ctypes.CDLL(str(path))
        lib.lora_add_supported.argtypes = [ctypes.c_char_p]
        if isa is not None and not lib.lora_add_supported(isa.encode()):
            raise RuntimeError(f"this CPU cannot run the {isa} variant of the LoRA kernel")
        fn = lib.lora_add if isa is None else getattr(lib, f"lora_add_{isa}")
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        fn.argtypes = [p, i32, i64, p, i32, i64, p, p, i64, p, i32, i64, i64, i64, i64, p, p,
                       ctypes.c_float]
        fn.restype = ctypes.c_int
        self._fn = fn
        self.path = path
        lib.lora_add_isa.restype = ctypes.c_char_p
        self.isa: str = isa or lib.lora_add_isa().decode()   # the variant this calls
        self._lib = lib

    def supported(self, isa: str) -> bool:
        return bool(self._lib.lora_add_supported(isa.encode()))

    def add(self, y: torch.Tensor, x: torch.Tensor, rows: tuple, layer: tuple,
            scale: float) -> bool:
        """y[t] += scale * x[t] @ A @ B for the step's rows (see kernels/lora_add.c); False
        when the kernel cannot take these tensors (the caller uses the torch path).

        `rows`: (slot of each row, the rows sorted by slot, how many), as int64 tensors'
        addresses (StepPlan.kernel_rows). `layer`: the layer's weights as the kernel reads
        them (FusedLoraWeights.kernel_layer), made once per adapter load."""
        # ~120 calls a step: each tensor attribute read once (they are calls into torch).
        y_dtype, x_dtype, y_stride, x_stride = y.dtype, x.dtype, y.stride(), x.stride()
        if y_dtype not in ROW_DTYPES or x_dtype not in ROW_DTYPES or y_stride[1] != 1 \
                or x_stride[1] != 1 or not (y.is_cpu and x.is_cpu):
            return False   # the kernel reads float32 or bf16 rows, unit column stride, on the CPU
        status = self._fn(y.data_ptr(), y_dtype is torch.bfloat16, y_stride[0],
                          x.data_ptr(), x_dtype is torch.bfloat16, x_stride[0], *rows, *layer,
                          scale)
        return status == 0


def layer_arguments(a_t: torch.Tensor, slices: int, rank: int, b_pointers: ctypes.Array,
                    out_sizes: ctypes.Array) -> tuple:
    """A layer's weights (float32 or bf16, a_t's dtype and b's) as lora_add reads them: (a_t,
    bf16 or not, in, sr, slices, rank, b, out sizes)."""
    if a_t.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"the LoRA kernel reads float32 or bf16 weights, not {a_t.dtype}")
    return (a_t.data_ptr(), a_t.dtype is torch.bfloat16, a_t.shape[1], a_t.shape[2], slices,
            rank, b_pointers, out_sizes)


def weight_dtype(source: torch.dtype) -> torch.dtype:
    """The dtype the kernel keeps a layer's weights in: bf16 when vLLM holds them in bf16
    (exactly the same values in half the bytes: a step reads every adapter's weights from
    memory, after the base model's pass has evicted them from the caches), else float32."""
    return torch.bfloat16 if source is torch.bfloat16 else torch.float32


def padded(columns: int) -> int:
    """a_t's last dimension for slices x rank columns."""
    return -(-columns // LANES) * LANES


@lru_cache(maxsize=1)
def load() -> LoraKernel | None:
    """The kernel, built first if this source has no build here; None when it cannot be had
    (no compiler, a failed build, FINETUNE_LORA_KERNEL=0), with the reason logged."""
    if os.environ.get("FINETUNE_LORA_KERNEL", "1") == "0":
        return None
    try:
        kernel = LoraKernel(build())
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("the LoRA kernel is unavailable, using the torch path: %s", detail)
        return None
    log.info("LoRA kernel %s (%s)", kernel.path, kernel.isa)
    return kernel


def available() -> bool:
    return load() is not None


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build(force="--force" in sys.argv[1:]))
