"""PEFT LoRA adapter files (adapter_config.json + adapter_model.safetensors), checked without
trusting them. Control checks an imported adapter with these rules at registration, inference
checks every adapter version with the same rules before its first load, so a file that would
crash the engine or run code is refused before any engine sees it.

Nothing here imports torch or unpickles anything: the safetensors header is parsed by hand
(8-byte little-endian length, then a JSON object) within documented bounds, and every tensor's
dtype, shape and byte range is checked against the file. Refusals are of two kinds:

- MalformedAdapter (INVALID_ARGUMENT): the files are not a well-formed safetensors LoRA adapter
  (a pickle, a truncated file, an oversized or unreadable header, a config that is not JSON, a
  file missing);
- IncompatibleAdapter (FAILED_PRECONDITION): well-formed, but not for this base model (another
  base model, a rank over its limit, a target module it does not support, shapes or layers its
  weights do not have, a peft feature the engine does not serve).

Base-model shapes come from the base folder: its weights' safetensors headers where the folder
holds weights, else its config.json (Llama-family decoders: hidden_size, intermediate_size,
num_attention_heads, num_key_value_heads, head_dim, num_hidden_layers).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Mapping, Protocol

from services.common.errors import FailedPrecondition, InvalidArgument

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
# Pickle-based checkpoints can run code when loaded: refused outright, by name and by content.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# The safetensors format's own bound on its JSON header (its reader refuses larger ones).
MAX_HEADER_BYTES = 100 * 1000 * 1000
MAX_CONFIG_BYTES = 1 << 20
MAX_TENSOR_DIMS = 8

# safetensors dtype -> bytes per element
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
LORA_DTYPES = ("F16", "BF16", "F32")

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class MalformedAdapter(InvalidArgument):
    """The files are not a well-formed safetensors LoRA adapter."""


class IncompatibleAdapter(FailedPrecondition):
    """A well-formed adapter that does not fit the base model."""


class AdapterBase(Protocol):
    """What the checks need of a base model (the catalog's BaseModelSpec, inference's
    BaseModel)."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def target_modules(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    ranks: tuple[int, ...] = ()    # every rank the config declares (r and its rank_pattern)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int                     # byte offsets in the data section, [begin, end)
    end: int


# -- safetensors, by hand -------------------------------------------------------------------

def pickle_kind(head: bytes) -> str | None:
    """What a file starting with `head` is when it is a pickle or a torch.save archive."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save's format, pickles inside)"
    return None


def read_safetensors_header(path: Path, what: str = ADAPTER_WEIGHTS) -> dict[str, TensorEntry]:
    """The tensors of a safetensors file, checked against the file's size; MalformedAdapter
    says what is wrong. `__metadata__` must map strings to strings and is not returned."""
    try:
        with open(path, "rb") as f:
            size = Path(path).stat().st_size
            return _parse_header(f, size, what)
    except OSError as exc:
        raise MalformedAdapter(f"{what} is not readable: {exc.strerror or exc}") from None


def _parse_header(f: BinaryIO, size: int, what: str) -> dict[str, TensorEntry]:
    head = f.read(8)
    kind = pickle_kind(head)
    if kind is not None:
        raise MalformedAdapter(f"{what} is {kind}, not safetensors; pickles are refused")
    if len(head) < 8:
        raise MalformedAdapter(f"{what} is truncated: {size} bytes is shorter than a "
                               "safetensors header")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:
        raise MalformedAdapter(f"{what} declares a safetensors header of {length} bytes, over "
                               f"the limit of {MAX_HEADER_BYTES}")
    if 8 + length > size:
        raise MalformedAdapter(f"{what} is truncated: its header needs {8 + length} bytes, the "
                               f"file has {size}")
    raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedAdapter(f"{what} has a safetensors header that is not JSON: "
                               f"{str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise MalformedAdapter(f"{what} has a safetensors header that is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise MalformedAdapter(f"{what}: __metadata__ must map strings to strings")
    entries = {name: _entry(name, value, what) for name, value in header.items()}
    _check_layout(entries, size - 8 - length, what)
    return entries


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:100]!r}")
        out[key] = value
    return out


def _entry(name: str, value: Any, what: str) -> TensorEntry:
    if not isinstance(value, dict):
        raise MalformedAdapter(f"{what}: tensor {name[:200]} has no dtype, shape and offsets")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise MalformedAdapter(f"{what}: tensor {name[:200]} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS and all(
            _natural(d) for d in shape)):
        raise MalformedAdapter(f"{what}: tensor {name[:200]} has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
            _natural(o) for o in offsets) and offsets[0] <= offsets[1]):
        raise MalformedAdapter(f"{what}: tensor {name[:200]} has invalid data_offsets")
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise MalformedAdapter(f"{what}: tensor {name[:200]} of shape {shape} and dtype "
                               f"{dtype} does not fill its {end - begin} bytes")
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(entries: Mapping[str, TensorEntry], data_bytes: int, what: str) -> None:
    """The tensors must tile the data section exactly, as safetensors writes them: no overlap
    (two tensors sharing bytes), no gap, nothing past the end (a truncated file), nothing
    after the last tensor."""
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            raise MalformedAdapter(f"{what}: tensor {name[:200]} starts at byte {entry.begin} "
                                   f"of the data, not at {position} (tensors overlap or leave "
                                   "a gap)")
        position = entry.end
    if position > data_bytes:
        raise MalformedAdapter(f"{what} is truncated: its tensors need {position} bytes of "
                               f"data, the file holds {data_bytes}")
    if position < data_bytes:
        raise MalformedAdapter(f"{what} has {data_bytes - position} bytes after its last "
                               "tensor")


# -- the base model's layers ----------------------------------------------------------------

def base_linear_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the base model's weights by tensor name, read from its safetensors headers."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        for name, entry in read_safetensors_header(file, file.name).items():
            shapes[name] = entry.shape
    return shapes


def shapes_from_config(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The projection weights of a Llama-family decoder (Llama, Mistral, Qwen2, SmolLM), by
    tensor name, from its config.json: what LoRA A/B shapes must fit when the weights
    themselves are not at hand."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        intermediate = int(config["intermediate_size"])
        layers = int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"config.json lacks what the layer shapes need: {exc}") from None
    per_layer = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }
    return {f"model.layers.{i}.{module}.weight": shape
            for i in range(layers) for module, shape in per_layer.items()}


def base_layer_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """The base model's weight shapes: from its weights' headers where the folder holds
    weights, else computed from its config.json."""
    folder = Path(model_dir)
    if any(folder.glob("*.safetensors")):
        return base_linear_shapes(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{folder} has neither weights nor a readable config.json: "
                                f"{exc}") from None
    return shapes_from_config(config)


# -- the adapter ----------------------------------------------------------------------------

def validate_adapter(folder: Path, base: AdapterBase, max_rank: int,
                     base_shapes: Mapping[str, tuple[int, ...]]) -> AdapterInfo:
    """Check an adapter folder against its base model; MalformedAdapter or IncompatibleAdapter
    say what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MalformedAdapter("the model's adapter files are missing")
    pickled = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise MalformedAdapter(
            f"adapter has pickle-based weights ({', '.join(pickled)}); only safetensors is "
            "accepted")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise MalformedAdapter(f"adapter has no {ADAPTER_WEIGHTS}")
    info = check_config(read_config(folder / ADAPTER_CONFIG), base, max_rank)
    check_tensors(read_safetensors_header(folder / ADAPTER_WEIGHTS), info, base, max_rank,
                  base_shapes)
    return info


def read_config(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise MalformedAdapter(f"adapter has no {ADAPTER_CONFIG}") from None
    except OSError as exc:
        raise MalformedAdapter(f"{ADAPTER_CONFIG} is not readable: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise MalformedAdapter(f"adapter's {ADAPTER_CONFIG} is larger than "
                               f"{MAX_CONFIG_BYTES} bytes")
    kind = pickle_kind(raw[:8])
    if kind is not None:
        raise MalformedAdapter(f"adapter's {ADAPTER_CONFIG} is {kind}; pickles are refused")
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedAdapter(f"adapter's {ADAPTER_CONFIG} is not valid JSON") from None
    if not isinstance(config, dict):
        raise MalformedAdapter(f"adapter's {ADAPTER_CONFIG} is not a JSON object")
    return config


def check_config(config: Mapping[str, Any], base: AdapterBase, max_rank: int) -> AdapterInfo:
    """A LoRA config the engine serves on `base`: rank, target modules, base model, features."""
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise IncompatibleAdapter(f"adapter type {peft_type} is not supported (LoRA only)")
    unsupported = [name for name, present in (
        ("DoRA", config.get("use_dora")),
        ("LoRA bias", config.get("lora_bias") or config.get("bias") not in (None, "none")),
        ("modules_to_save", config.get("modules_to_save")),
        ("layer_replication", config.get("layer_replication")),
        ("activated LoRA", config.get("alora_invocation_tokens")),
    ) if present]
    if unsupported:
        raise IncompatibleAdapter(f"adapter uses unsupported features: {', '.join(unsupported)}")

    rank, pattern = config.get("r"), config.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise MalformedAdapter("adapter's rank_pattern must map module names to ranks")
    ranks = [rank, *pattern.values()]
    if not isinstance(rank, int) or not all(_natural(r) and r > 0 for r in ranks):
        raise MalformedAdapter("adapter's LoRA rank is missing or not a positive integer")
    if max(ranks) > max_rank:
        raise IncompatibleAdapter(
            f"adapter rank {max(ranks)} exceeds the maximum rank {max_rank} served for "
            f"{base.name}")

    targets = config.get("target_modules")
    if isinstance(targets, str) or not targets or not isinstance(targets, list) or \
            not all(isinstance(t, str) for t in targets):
        raise MalformedAdapter("adapter's target_modules must be a list of module names")
    supported = set(base.target_modules)
    unknown = sorted(set(targets) - supported)
    if unknown:
        raise IncompatibleAdapter(
            f"adapter targets modules {unknown} that are not supported for {base.name} "
            f"(supported: {sorted(supported)})")

    declared_base = config.get("base_model_name_or_path")
    if declared_base and not names_base_model(str(declared_base), base):
        raise IncompatibleAdapter(
            f"adapter was trained on {declared_base}, not on {base.name}")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or not alpha:
        alpha = rank
    return AdapterInfo(rank=rank, alpha=float(alpha), target_modules=tuple(sorted(targets)),
                       ranks=tuple(ranks))


def names_base_model(declared: str, base: AdapterBase) -> bool:
    """Whether an adapter's base_model_name_or_path names `base`. The trainer records the base
    folder it loaded, which differs between machines, and adapters trained elsewhere name a hub
    id (HuggingFaceTB/SmolLM2-135M-Instruct): the last path component, compared without case,
    is the catalog name or the folder's name in every deployment we provision."""
    last = PurePosixPath(declared.rstrip("/")).name.lower()
    return declared in (base.name, str(base.path)) or \
        last in (base.name.lower(), base.path.name.lower())


def check_tensors(entries: Mapping[str, TensorEntry], info: AdapterInfo, base: AdapterBase,
                  max_rank: int, base_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every tensor a LoRA A or B weight on a supported module of a layer the base model has,
    with shapes that fit that module, each module's A and B of one rank."""
    if not entries:
        raise MalformedAdapter("adapter weights file holds no tensors")
    supported = set(base.target_modules)
    layers = {int(m.group(1)) for name in base_shapes if (m := _LAYER.search(name))}
    modules: dict[str, dict[str, int]] = {}
    for name, entry in entries.items():
        module, kind = split_lora_tensor_name(name)
        if module is None:
            raise MalformedAdapter(f"adapter tensor {name[:200]} is not a LoRA A/B weight")
        if module.rsplit(".", 1)[-1] not in supported:
            raise IncompatibleAdapter(f"adapter tensor {name[:200]} targets an unsupported "
                                      "module")
        if entry.dtype not in LORA_DTYPES:
            raise IncompatibleAdapter(f"adapter tensor {name[:200]} is {entry.dtype}; LoRA "
                                      f"weights must be one of {', '.join(LORA_DTYPES)}")
        shape = entry.shape
        base_shape = base_shapes.get(module + ".weight")
        if base_shape is None or len(base_shape) != 2 or len(shape) != 2:
            raise IncompatibleAdapter(f"adapter tensor {name[:200]} does not match any weight "
                                      f"of {base.name}{_past_last_layer(module, layers)}")
        out_features, in_features = base_shape
        rank = shape[0] if kind == "A" else shape[1]
        expected = (rank, in_features) if kind == "A" else (out_features, rank)
        if shape != expected or rank > max_rank or rank == 0:
            raise IncompatibleAdapter(
                f"adapter tensor {name[:200]} has shape {list(shape)}, which does not fit "
                f"{base.name} ({module} is {out_features}x{in_features}, max rank {max_rank})")
        if info.ranks and rank not in info.ranks:
            raise MalformedAdapter(f"adapter tensor {name[:200]} has rank {rank}; "
                                   f"{ADAPTER_CONFIG} declares {sorted(set(info.ranks))}")
        modules.setdefault(module, {})[kind] = rank
    for module, ranks in sorted(modules.items()):
        if set(ranks) != {"A", "B"}:
            missing = ({"A", "B"} - set(ranks)).pop()
            raise MalformedAdapter(f"adapter module {module[:200]} has no lora_{missing} "
                                   "weight")
        if ranks["A"] != ranks["B"]:
            raise MalformedAdapter(f"adapter module {module[:200]} has lora_A of rank "
                                   f"{ranks['A']} and lora_B of rank {ranks['B']}")


def _past_last_layer(module: str, layers: set[int]) -> str:
    found = _LAYER.search(module)
    if found is None or not layers or int(found.group(1)) <= max(layers):
        return ""
    return f": layer {found.group(1)} is past its last layer ({max(layers) + 1} layers)"


def split_lora_tensor_name(name: str) -> tuple[str | None, str]:
    """'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight'
    -> ('model.layers.0.mlp.up_proj', 'A')."""
    for kind in ("A", "B"):
        suffix = f".lora_{kind}.weight"
        if name.endswith(suffix):
            module = name[: -len(suffix)]
            return module.removeprefix("base_model.model."), kind
    return None, ""
