"""The adapter registry: validation of adapter files, unique LoRA ids, one validation per version,
and the resolution cache's TTL."""

import asyncio
import json

import grpc
import pytest
import torch
from safetensors.torch import save_file

from services.common import errors
from services.inference.adapters import (AdapterRegistry, CachedResolver, ResolvedModel,
                                         validate_adapter)

# --- validate_adapter -------------------------------------------------------------------------


def test_a_good_adapter_passes(tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "a", rank=8)
    info = validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)
    assert info.rank == 8 and info.alpha == 16.0
    assert info.target_modules == ("down_proj", "q_proj")


@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "adapter_model.bin").write_bytes(b"pickle"), "pickle"),
    (lambda f: (f / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
    (lambda f: (f / "adapter_config.json").unlink(), "no adapter_config.json"),
    (lambda f: (f / "adapter_config.json").write_text("{nope"), "not valid JSON"),
    (lambda f: (f / "adapter_model.safetensors").write_bytes(b"garbage"), "safetensors"),
])
def test_broken_adapter_files_are_refused(tmp_path, fakes, change, message):
    folder = fakes.write_adapter(tmp_path / "a")
    change(folder)
    with pytest.raises(errors.FailedPrecondition, match=message):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


def test_missing_folder_is_refused(tmp_path, fakes):
    with pytest.raises(errors.FailedPrecondition, match="missing"):
        validate_adapter(tmp_path / "absent", fakes.BASE, 16, fakes.BASE_SHAPES)


def test_rank_above_the_limit_is_refused(tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "a", rank=32)
    with pytest.raises(errors.FailedPrecondition, match="rank 32 exceeds the maximum rank 16"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


def test_rank_pattern_above_the_limit_is_refused(tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "a", rank=4, config_extra={"rank_pattern":
                                                                       {"q_proj": 64}})
    with pytest.raises(errors.FailedPrecondition, match="rank 64"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


def test_unsupported_target_modules_are_refused(tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "a", config_extra={"target_modules":
                                                               ["q_proj", "lm_head"]})
    with pytest.raises(errors.FailedPrecondition, match=r"\['lm_head'\]"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


def test_a_tensor_on_an_unsupported_module_is_refused(tmp_path, fakes):
    tensors = {"base_model.model.model.embed_tokens.lora_A.weight": torch.zeros(4, 100),
               "base_model.model.model.embed_tokens.lora_B.weight": torch.zeros(16, 4)}
    folder = fakes.write_adapter(tmp_path / "a", tensors=tensors)
    with pytest.raises(errors.FailedPrecondition, match="unsupported module"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


def test_shapes_of_another_base_model_are_refused(tmp_path, fakes):
    # Trained on a 32-wide model: lora_A's input size does not match q_proj's 16.
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
               torch.zeros(4, 32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
               torch.zeros(32, 4)}
    folder = fakes.write_adapter(tmp_path / "a", tensors=tensors, targets=("q_proj",))
    with pytest.raises(errors.FailedPrecondition, match="does not fit tiny"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


def test_a_layer_the_base_does_not_have_is_refused(tmp_path, fakes):
    tensors = {"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight":
               torch.zeros(4, 16),
               "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight":
               torch.zeros(16, 4)}
    folder = fakes.write_adapter(tmp_path / "a", tensors=tensors, targets=("q_proj",))
    with pytest.raises(errors.FailedPrecondition, match="does not match any weight"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


@pytest.mark.parametrize("extra, message", [
    ({"base_model_name_or_path": "/models/llama-3-8b"}, "trained on /models/llama-3-8b"),
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"peft_type": "IA3"}, "IA3"),
    ({"r": 0}, "positive integer"),
    ({"target_modules": ".*proj"}, "list of module names"),
])
def test_incompatible_configs_are_refused(tmp_path, fakes, extra, message):
    folder = fakes.write_adapter(tmp_path / "a", config_extra=extra)
    with pytest.raises(errors.FailedPrecondition, match=message):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


@pytest.mark.parametrize("declared", ["tiny", "/somewhere/else/tiny", "/nonexistent/tiny", None])
def test_base_model_named_by_catalog_name_or_folder_is_compatible(tmp_path, fakes, declared):
    folder = fakes.write_adapter(tmp_path / "a",
                                 config_extra={"base_model_name_or_path": declared})
    validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


# --- AdapterRegistry --------------------------------------------------------------------------


async def test_base_model_needs_no_adapter(registry, fakes):
    assert await registry.adapter_for(fakes.base_resolution()) is None


async def test_each_adapter_version_gets_its_own_lora_name_and_id(registry, tmp_path, fakes):
    v1 = fakes.write_adapter(tmp_path / "jobs/ft_1/output")
    v2 = fakes.write_adapter(tmp_path / "jobs/ft_2/output")
    other = fakes.write_adapter(tmp_path / "jobs/ft_3/output")
    a1 = await registry.adapter_for(fakes.adapter_resolution("db.s.m", v1, 11))
    a2 = await registry.adapter_for(fakes.adapter_resolution("db.s.m", v2, 12))
    b = await registry.adapter_for(fakes.adapter_resolution("db.s.other", other, 13))
    assert (a1.name, a1.int_id, a1.path) == ("db.s.m@11", 11, str(v1))
    assert (a2.name, a2.int_id) == ("db.s.m@12", 12)
    assert b.int_id == 13
    assert len({a1.int_id, a2.int_id, b.int_id}) == 3
    assert len({a1.name, a2.name, b.name}) == 3
    # The same version again is the same adapter, without validating again.
    again = await registry.adapter_for(fakes.adapter_resolution("db.s.m", v1, 11))
    assert again == a1 and registry.validations == 3


async def test_concurrent_first_requests_validate_once(registry, tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "out")
    resolved = fakes.adapter_resolution("m", folder, 5)
    got = await asyncio.gather(*[registry.adapter_for(resolved) for _ in range(8)])
    assert len(set(got)) == 1 and registry.validations == 1


async def test_an_invalid_adapter_is_failed_precondition_and_remembered(registry, tmp_path,
                                                                        fakes):
    folder = fakes.write_adapter(tmp_path / "out", rank=32)
    resolved = fakes.adapter_resolution("m", folder, 6)
    for _ in range(2):
        with pytest.raises(errors.FailedPrecondition, match="rank 32") as info:
            await registry.adapter_for(resolved)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert registry.validations == 1


async def test_a_reused_adapter_id_is_refused(registry, tmp_path, fakes):
    a = fakes.write_adapter(tmp_path / "a")
    b = fakes.write_adapter(tmp_path / "b")
    await registry.adapter_for(fakes.adapter_resolution("m", a, 7))
    with pytest.raises(errors.FailedPrecondition, match="conflict"):
        await registry.adapter_for(fakes.adapter_resolution("m", b, 7))


async def test_adapter_without_a_positive_id_is_refused(registry, tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "a")
    with pytest.raises(errors.FailedPrecondition, match="no valid adapter version"):
        await registry.adapter_for(fakes.adapter_resolution("m", folder, 0))


async def test_model_on_another_base_is_refused(registry, tmp_path, fakes):
    resolved = ResolvedModel(model="m", base_model="other", adapter_uri="file:///x",
                             adapter_id=3)
    with pytest.raises(errors.FailedPrecondition, match="runs on base model other"):
        await registry.adapter_for(resolved)


async def test_remote_adapters_are_downloaded_once_into_the_cache(tmp_path, fakes):
    import fsspec
    local = fakes.write_adapter(tmp_path / "src")
    fs = fsspec.filesystem("memory")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        fs.pipe(f"/store/jobs/ft_9/output/{name}", (local / name).read_bytes())
    fs.pipe("/store/jobs/ft_9/output/training_results.csv", b"step,epoch\n")
    registry = AdapterRegistry(fakes.BASE, 16, tmp_path / "cache",
                               base_shapes=lambda: fakes.BASE_SHAPES)
    resolved = ResolvedModel(model="m", base_model="tiny",
                             adapter_uri="memory://store/jobs/ft_9/output", adapter_id=9)
    adapter = await registry.adapter_for(resolved)
    assert adapter.path == str(tmp_path / "cache" / "9")
    assert sorted(p.name for p in (tmp_path / "cache" / "9").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    fs.rm("/store/jobs/ft_9", recursive=True)


async def test_remote_pickle_adapters_are_refused_without_fetching(tmp_path, fakes):
    import fsspec
    fs = fsspec.filesystem("memory")
    fs.pipe("/store2/out/adapter_model.bin", b"\x80\x04pickle")
    fs.pipe("/store2/out/adapter_config.json", json.dumps({"r": 4}).encode())
    registry = AdapterRegistry(fakes.BASE, 16, tmp_path / "cache",
                               base_shapes=lambda: fakes.BASE_SHAPES)
    resolved = ResolvedModel(model="m", base_model="tiny", adapter_uri="memory://store2/out",
                             adapter_id=10)
    with pytest.raises(errors.FailedPrecondition, match="pickle"):
        await registry.adapter_for(resolved)
    assert (tmp_path / "cache" / "10" / "adapter_model.bin").read_bytes() == b""
    fs.rm("/store2", recursive=True)


# --- CachedResolver ---------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def test_resolutions_are_cached_for_the_ttl(fakes):
    inner = fakes.FakeResolver({"m": fakes.base_resolution("m")})
    clock = Clock()
    cache = CachedResolver(inner, ttl_s=30, clock=clock)
    await cache.resolve("key-a", "m")
    await cache.resolve("key-a", "m")
    assert len(inner.calls) == 1
    await cache.resolve("key-b", "m")  # another caller is resolved (and authorized) on its own
    assert len(inner.calls) == 2
    clock.now += 31
    await cache.resolve("key-a", "m")
    assert len(inner.calls) == 3


async def test_control_can_shorten_the_ttl(fakes):
    inner = fakes.FakeResolver({"m": fakes.base_resolution("m", cache_ttl_seconds=5)})
    clock = Clock()
    cache = CachedResolver(inner, ttl_s=30, clock=clock)
    await cache.resolve("k", "m")
    clock.now += 4
    await cache.resolve("k", "m")
    assert len(inner.calls) == 1
    clock.now += 2
    await cache.resolve("k", "m")
    assert len(inner.calls) == 2


async def test_errors_are_not_cached(fakes):
    inner = fakes.FakeResolver({})
    cache = CachedResolver(inner, ttl_s=30, clock=Clock())
    with pytest.raises(errors.NotFound):
        await cache.resolve("k", "m")
    inner.models["m"] = fakes.base_resolution("m")
    assert (await cache.resolve("k", "m")).model == "m"


async def test_raw_keys_are_not_kept(fakes):
    inner = fakes.FakeResolver({"m": fakes.base_resolution("m")})
    cache = CachedResolver(inner, ttl_s=30, clock=Clock())
    await cache.resolve("ft_secret_key", "m")
    assert all("ft_secret_key" not in key for key, *_ in cache._entries)


async def test_cache_size_is_bounded(fakes):
    inner = fakes.FakeResolver({"m": fakes.base_resolution("m")})
    cache = CachedResolver(inner, ttl_s=30, clock=Clock(), max_entries=3)
    for i in range(5):
        await cache.resolve(f"k{i}", "m")
    assert len(cache._entries) == 3
    await cache.resolve("k0", "m")  # evicted first, resolved again
    assert len(inner.calls) == 6


def test_fake_adapter_tensor_layout_matches_peft(tmp_path, fakes):
    # The fake adapters mirror peft's names: base_model.model.<module>.lora_A.weight.
    folder = fakes.write_adapter(tmp_path / "a", targets=("q_proj",))
    from safetensors import safe_open
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]


def test_an_adapter_without_tensors_is_refused(tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "a")
    save_file({}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(errors.FailedPrecondition, match="no tensors"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


def test_a_non_lora_tensor_is_refused(tmp_path, fakes):
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.weight": torch.zeros(16, 16)}
    folder = fakes.write_adapter(tmp_path / "a", tensors=tensors, targets=("q_proj",))
    with pytest.raises(errors.FailedPrecondition, match="not a LoRA A/B weight"):
        validate_adapter(folder, fakes.BASE, 16, fakes.BASE_SHAPES)


async def test_a_plain_path_names_a_local_adapter(registry, tmp_path, fakes):
    folder = fakes.write_adapter(tmp_path / "plain/output")
    resolved = ResolvedModel(model="m", base_model="tiny", adapter_uri=str(folder) + "/",
                             adapter_id=21)
    adapter = await registry.adapter_for(resolved)
    assert adapter.path == str(folder)


async def test_an_unknown_storage_scheme_is_failed_precondition(registry, fakes):
    resolved = ResolvedModel(model="m", base_model="tiny", adapter_uri="nosuchfs://b/out",
                             adapter_id=22)
    with pytest.raises(errors.FailedPrecondition, match="not readable"):
        await registry.adapter_for(resolved)


# --- revocation bound (documented in services/inference/adapters.py) --------------------------

@pytest.mark.parametrize("revoke, error", [
    ("delete", errors.NotFound),
    ("revoke_usage", errors.PermissionDenied),
])
async def test_a_revocation_takes_effect_within_the_cache_ttl(fakes, engine, registry, usage,
                                                              revoke, error):
    from services.inference.completions import CompletionInput, Completions, Limits

    class Revocable(fakes.FakeResolver):
        revoked = False

        async def resolve(self, api_key, model, on_behalf_of=""):
            if self.revoked and revoke == "revoke_usage":
                self.calls.append((api_key, model))
                raise errors.PermissionDenied(f"USAGE on model {model} is required")
            return await super().resolve(api_key, model, on_behalf_of)

    inner = Revocable({"m": fakes.base_resolution("m", cache_ttl_seconds=10)})
    clock = Clock()
    core = Completions(engine, CachedResolver(inner, ttl_s=30, clock=clock), registry, usage,
                       Limits(default_max_tokens=4, max_in_flight=4))
    request = CompletionInput(model="m", prompt="hello")
    await core.complete("key", request)
    if revoke == "delete":
        del inner.models["m"]
    inner.revoked = True
    clock.now += 9.9   # within control's TTL (shorter than ours): still the cached answer
    await core.complete("key", request)
    clock.now += 0.2   # past it: the revocation is seen
    with pytest.raises(error):
        await core.complete("key", request)
