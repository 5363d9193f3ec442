"""The adapter registry: resolve a model name through control, fetch and validate its adapter once,
and give each adapter version its own LoRA name and id.

Control owns the truth (who may use which model, where its adapter lies, its version id); this
module caches resolutions briefly and validates adapter files before the engine ever sees them,
so a bad file fails one request with FAILED_PRECONDITION instead of taking the engine down.

Revocation bound: a successful resolution is cached per (caller's key, model) for
min(--resolution-cache-ttl, control's cache_ttl_seconds) seconds, 30 s by default on both sides.
A revoked USAGE grant (PERMISSION_DENIED), a deleted model (NOT_FOUND) or a revoked key
(UNAUTHENTICATED) therefore takes effect for new requests at most that long after control
records it; requests already admitted finish. Errors are never cached, so a new grant or model
works at once.

Adapters at scale: any number of models share the engine's `max_loras` batch slots and
`max_cpu_loras` in-memory slots; vLLM evicts the least recently used adapter when a slot is
needed and reloads it from its (immutable, validated) folder on its next request. Each adapter
version is its own LoRA name and integer id (control's adapter_id, never reused).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Protocol

import grpc

from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.common import adapter_files, errors
from services.common.adapter_files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PICKLE_SUFFIXES,
    AdapterInfo,
    base_linear_shapes,
)
from services.common.artifacts import ArtifactStore
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.keys import hash_key
from services.common.metrics import InferenceMetrics
from services.inference.config import BaseModel
from services.inference.engine import LoraAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved for one caller by control (see internal.proto ResolvedModel)."""

    model: str
    base_model: str
    account_id: str = ""
    user_id: str = ""
    base_model_path: str = ""
    adapter_uri: str = ""           # empty for a base model
    adapter_id: int = 0             # unique per adapter version, never reused; 0 for a base model
    context_window: int = 0
    cache_ttl_seconds: int = 0

    @property
    def is_base(self) -> bool:
        return not self.adapter_uri


class ModelResolver(Protocol):
    async def resolve(self, api_key: str, model: str,
                      on_behalf_of: str = "") -> ResolvedModel: ...



class GrpcModelResolver:
    """ModelResolver over control's ModelResolutionService, authenticated with the service token."""

    def __init__(self, channel: grpc.aio.Channel, service_token: str, timeout_s: float = 10.0):
        self._stub = internal_pb2_grpc.ModelResolutionServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {service_token}"),)
        self._timeout_s = timeout_s

    async def resolve(self, api_key: str, model: str, on_behalf_of: str = "") -> ResolvedModel:
        account_id, user_id = "", ""
        if on_behalf_of:
            account_id, _, user_id = on_behalf_of.partition("/")
            if not account_id or not user_id:
                raise errors.InvalidArgument("x-finetune-on-behalf-of must be "
                                             "<account_id>/<user_id>")
        try:
            r = await self._stub.ResolveModel(
                internal_pb2.ResolveModelRequest(api_key=api_key, model=model,
                                                 on_behalf_of_account_id=account_id,
                                                 on_behalf_of_user_id=user_id),
                metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = errors.passed_on(exc.code(), exc.details())
            if error is not None:
                raise error from None
            log.warning("model resolution failed: %s %s", exc.code().name, exc.details())
            raise errors.Unavailable("model resolution is unavailable, retry later") from None
        return ResolvedModel(
            model=r.model or model, base_model=r.base_model, account_id=r.account_id,
            user_id=r.user_id, base_model_path=r.base_model_path, adapter_uri=r.adapter_uri,
            adapter_id=r.adapter_id, context_window=r.context_window,
            cache_ttl_seconds=r.cache_ttl_seconds)


class CachedResolver:
    """A ModelResolver that remembers successful resolutions for a short TTL.

    Keyed by (hash of the key, model) so raw keys are not kept in memory longer than a request.
    Errors are not cached: a model created or a grant given a second ago must work now.
    """

    def __init__(self, inner: ModelResolver, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000):
        self._inner = inner
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, ResolvedModel]] = \
            OrderedDict()

    async def resolve(self, api_key: str, model: str, on_behalf_of: str = "") -> ResolvedModel:
        # Delegated answers are the delegate's: never served to the caller acting for itself.
        cache_key = (hash_key(api_key), model, on_behalf_of)
        hit = self._entries.get(cache_key)
        now = self._clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        resolved = await self._inner.resolve(api_key, model, on_behalf_of)
        ttl = self._ttl_s
        if resolved.cache_ttl_seconds > 0:  # control may ask for a shorter lifetime
            ttl = min(ttl, resolved.cache_ttl_seconds)
        if ttl > 0:
            self._entries[cache_key] = (self._clock() + ttl, resolved)
            self._entries.move_to_end(cache_key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return resolved


# --- validation -------------------------------------------------------------------------------

def validate_adapter(folder: Path, base: BaseModel, max_rank: int,
                     base_shapes: Mapping[str, tuple[int, ...]]) -> AdapterInfo:
    """Check an adapter folder before the engine loads it (services.common.adapter_files, the
    rules control applies to an import). Here every refusal is FAILED_PRECONDITION: the model's
    stored files, not the request, are at fault."""
    try:
        return adapter_files.validate_adapter(folder, base, max_rank, base_shapes)
    except InvalidArgument as exc:
        raise FailedPrecondition(exc.message) from None


# --- the registry -----------------------------------------------------------------------------

class AdapterRegistry:
    """Turns a resolved model into the LoraAdapter the engine loads, validating it once.

    Each adapter version is keyed by control's adapter_id, which is never reused: a retrained
    model gets a new id, a new LoRA name and a new engine slot, so no stale weights are served.
    """

    def __init__(self, base: BaseModel, max_rank: int, cache_dir: Path,
                 base_shapes: Callable[[], Mapping[str, tuple[int, ...]]] | None = None,
                 metrics: InferenceMetrics | None = None):
        self._base = base
        self._metrics = metrics
        self._max_rank = max_rank
        self._cache_dir = Path(cache_dir)
        self._base_shapes_fn = base_shapes or (lambda: base_linear_shapes(base.path))
        self._base_shapes: Mapping[str, tuple[int, ...]] | None = None
        self._ready: dict[int, LoraAdapter] = {}
        self._uris: dict[int, str] = {}
        self._invalid: dict[int, FailedPrecondition] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.validations = 0  # how many times an adapter was fetched and validated

    @property
    def base(self) -> BaseModel:
        return self._base

    async def adapter_for(self, resolved: ResolvedModel) -> LoraAdapter | None:
        if resolved.base_model != self._base.name:
            raise FailedPrecondition(
                f"model {resolved.model} runs on base model {resolved.base_model}; this "
                f"inference service serves {self._base.name}")
        if resolved.is_base:
            return None
        adapter_id = resolved.adapter_id
        if adapter_id <= 0:
            raise FailedPrecondition(f"model {resolved.model} has no valid adapter version")
        known_uri = self._uris.setdefault(adapter_id, resolved.adapter_uri)
        if known_uri != resolved.adapter_uri:
            # Ids are promised never to be reused; serving the cached weights would be wrong.
            log.error("adapter id %d seen for %s and %s", adapter_id, known_uri,
                      resolved.adapter_uri)
            raise FailedPrecondition(f"model {resolved.model}: adapter version conflict")
        if (ready := self._ready.get(adapter_id)) is not None:
            return ready
        lock = self._locks.setdefault(adapter_id, asyncio.Lock())
        async with lock:  # concurrent first requests fetch and validate once
            if (ready := self._ready.get(adapter_id)) is not None:
                return ready
            if (invalid := self._invalid.get(adapter_id)) is not None:
                raise invalid
            try:
                folder = await asyncio.to_thread(self._prepare, resolved)
            except FailedPrecondition as exc:
                # Versions never change, so the verdict holds; fetch errors are not cached.
                self._invalid[adapter_id] = exc
                log.warning("adapter %d of %s refused: %s", adapter_id, resolved.model,
                            exc.message)
                if self._metrics is not None:
                    self._metrics.adapters_failed_validation.inc()
                raise
            adapter = LoraAdapter(name=f"{resolved.model}@{adapter_id}", int_id=adapter_id,
                                  path=str(folder))
            self._ready[adapter_id] = adapter
            if self._metrics is not None:
                self._metrics.adapters_loaded.inc()
            return adapter

    def _prepare(self, resolved: ResolvedModel) -> Path:
        """Runs in a worker thread: fetch the adapter to a local folder and validate it."""
        self.validations += 1
        folder = self._local_folder(resolved.adapter_uri, resolved.adapter_id)
        if self._base_shapes is None:
            self._base_shapes = self._base_shapes_fn()
        validate_adapter(folder, self._base, self._max_rank, self._base_shapes)
        return folder

    def _local_folder(self, uri: str, adapter_id: int) -> Path:
        """The adapter as a local folder: read in place from a local store, else downloaded
        once into the cache (vLLM loads LoRA weights from a local path only)."""
        if "://" not in uri:  # a plain path names a local folder
            uri = Path(uri).expanduser().resolve().as_uri()
        uri = uri.rstrip("/")
        # The adapter's parent is the store root, so the adapter itself is addressable in it.
        try:
            store = ArtifactStore(uri.rsplit("/", 1)[0])
            local = store.local_path(uri)
        except (ValueError, OSError, ImportError) as exc:
            raise FailedPrecondition(f"adapter location {uri} is not readable: {exc}") from None
        if local is not None:
            return local
        dest = self._cache_dir / str(adapter_id)
        if dest.is_dir():  # downloaded before; versions are immutable
            return dest
        try:
            return self._download(store, uri, dest)
        except OSError as exc:
            # The store is down or refuses us: not a verdict on the adapter, so not cached.
            raise errors.Unavailable(f"adapter {uri} could not be fetched: {exc}") from exc

    def _download(self, store: ArtifactStore, uri: str, dest: Path) -> Path:
        names = store.list(uri)
        if not names:
            raise FailedPrecondition(f"no adapter files at {uri}")
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        # Fetched into a temporary sibling and renamed: the cache never holds half a version.
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=self._cache_dir))
        try:
            # Pickle files are only listed, never fetched: validation refuses their names.
            for name in names:
                target = tmp / name
                if name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                    with store.open(f"{uri}/{name}", "rb") as src, \
                            open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                elif name.endswith(PICKLE_SUFFIXES):
                    target.touch()
            try:
                tmp.rename(dest)
            except OSError:
                if not dest.is_dir():  # another replica sharing the cache may have won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest


class AdapterResidency:
    """Evictions, seen by comparing the adapters the engine holds between samples: vLLM evicts
    the least recently used adapter on its own and says nothing, so an adapter evicted and
    loaded again between two samples goes unseen. Sampled periodically and at each scrape."""

    def __init__(self, resident: Callable[[], Awaitable[set[int]]], metrics: InferenceMetrics):
        self._resident = resident
        self._metrics = metrics
        self._seen: set[int] = set()
        self._lock = asyncio.Lock()   # a scrape and the periodic sample may overlap

    async def sample(self) -> None:
        async with self._lock:
            now = set(await self._resident())
            self._metrics.adapters_evicted.inc(len(self._seen - now))
            self._metrics.adapters_resident.set(len(now))
            self._seen = now

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed sample must not end the sampling
                log.warning("sampling the engine's adapters failed", exc_info=True)
            await asyncio.sleep(interval_s)
