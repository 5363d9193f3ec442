"""The base-model catalog (a TOML file) and provisioning of model folders from their source."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "deploy" / "base_models.toml"
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    source: str
    path: Path
    context_window: int
    prompt_tokens: int
    completion_tokens: int
    rows_per_epoch: int
    max_lora_rank: int
    target_modules: tuple[str, ...]
    defaults: dict = field(default_factory=dict)
    chat_template: Path | None = None   # written into a provisioned folder (see ensure_model)

    def max_rows(self, epochs: int) -> int:
        """The Cortex row limit: rows per epoch divided by the number of epochs."""
        return self.rows_per_epoch // max(1, epochs)


def default_model_cache() -> Path:
    return Path(os.environ.get("FINETUNE_MODEL_CACHE", "~/.cache/finetune/models")).expanduser()


def load_catalog(path: str | os.PathLike | None = None,
                 model_cache: str | os.PathLike | None = None) -> dict[str, BaseModelSpec]:
    path = Path(path or DEFAULT_CATALOG)
    cache = Path(model_cache).expanduser() if model_cache else default_model_cache()
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    catalog = {}
    for name, entry in raw.get("models", {}).items():
        folder = Path(entry["path"]).expanduser() if entry.get("path") else cache / name
        catalog[name] = BaseModelSpec(
            name=name,
            source=entry.get("source", "path"),
            path=folder,
            context_window=int(entry["context_window"]),
            prompt_tokens=int(entry["prompt_tokens"]),
            completion_tokens=int(entry["completion_tokens"]),
            rows_per_epoch=int(entry["rows_per_epoch"]),
            max_lora_rank=int(entry.get("max_lora_rank", 64)),
            target_modules=tuple(entry.get("target_modules", ())),
            defaults=dict(entry.get("defaults", {})),
            chat_template=(path.parent / entry["chat_template"]) if entry.get("chat_template")
            else None,
        )
    return catalog


def is_provisioned(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def ensure_model(spec: BaseModelSpec) -> Path:
    """Make sure the model folder exists; provision it from its source once if not.

    A folder this project provisions (gguf-package) also gets the catalog's chat template, on
    every call, so a folder provisioned before the catalog changed follows it. Trainer, control
    and inference all format prompts with the folder's template, so they always agree."""
    if spec.source.startswith("gguf-package:"):
        if not is_provisioned(spec.path):
            _provision_from_gguf_package(spec.source.removeprefix("gguf-package:"), spec.path)
        if spec.chat_template is not None:
            install_chat_template(spec.path, spec.chat_template)
        return spec.path
    return ensure_folder(spec.name, spec.source, spec.path)


def is_store_source(source: str) -> bool:
    """A source that is an object-store (fsspec) URL: s3://bucket/models/<name>, gs://..."""
    return "://" in source


def ensure_folder(name: str, source: str, folder: Path) -> Path:
    """`folder` itself, downloaded first from `source` when that is an object-store URL and the
    folder is not there yet. Each process that loads the model calls this on its own machine
    (control, the trainer's driver and workers, inference), so no disk need be shared."""
    if is_provisioned(folder):
        return folder
    if not is_store_source(source):
        raise FileNotFoundError(f"base model {name}: no model folder at {folder}")
    _download_folder(name, source, folder)
    return folder


def _download_folder(name: str, source: str, dest: Path) -> None:
    from services.common.artifacts import ArtifactStore

    log.info("provisioning base model %s from %s into %s", name, source, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A temporary sibling renamed into place: a crash or a concurrent download never leaves a
    # half-written folder where a reader would take it for the model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        source = source.rstrip("/")
        ArtifactStore(source).get_dir(source, tmp)
        if not is_provisioned(tmp):
            raise FileNotFoundError(f"base model {name}: {source} holds no model folder "
                                    "(config.json and *.safetensors)")
        tmp.chmod(0o755)
        try:
            tmp.rename(dest)
        except OSError:
            if not is_provisioned(dest):   # not another process's download that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install_chat_template(folder: Path, template: Path) -> bool:
    """Make `template` the folder's chat template (transformers reads chat_template.jinja);
    True when it changed. Written to a temporary file and renamed: readers never see half."""
    text = template.read_text()
    target = folder / "chat_template.jinja"
    if target.is_file() and target.read_text() == text:
        return False
    tmp = folder / f".chat_template.jinja.{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(target)
    log.info("%s: chat template from %s", folder, template)
    return True


def _provision_from_gguf_package(ref: str, dest: Path) -> None:
    package, _, filename = ref.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"python package {package} (holding {filename}) is not installed")
    gguf_dir = Path(list(found.submodule_search_locations)[0])
    if not (gguf_dir / filename).exists():
        raise FileNotFoundError(f"{filename} not found in {gguf_dir}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("provisioning %s from %s (dequantizing GGUF once)", dest, gguf_dir / filename)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename,
                                                 dtype=torch.bfloat16)
    # The weights are dequantized now: a leftover GGUF quantization config would make vLLM and
    # peft treat the folder as quantized.
    model.hf_quantizer = None  # type: ignore[assignment]  # Module.__setattr__'s typing
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so a crash never leaves a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.chmod(0o755)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
