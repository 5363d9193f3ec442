"""Inference's adapter fetch from S3 into its local cache: keyed by version, validated before
the engine sees it, pickles never downloaded, and a restart served from the cache."""

from __future__ import annotations

import pytest

from services.common import errors
from services.common.artifacts import ArtifactStore
from services.inference.adapters import AdapterRegistry, ResolvedModel

pytestmark = pytest.mark.integration


def _resolved(uri: str, adapter_id: int) -> ResolvedModel:
    return ResolvedModel(model="db.schema.bot", base_model="tiny-base", adapter_uri=uri,
                         adapter_id=adapter_id)


async def test_versions_are_cached_apart_and_survive_a_restart(s3_bucket, adapter_dir,
                                                               inference_base, tmp_path):
    store = ArtifactStore(f"s3://{s3_bucket}/artifacts")
    v1, v2 = store.uri("jobs", "ft_1", "output"), store.uri("jobs", "ft_2", "output")
    store.put_dir(adapter_dir, v1)
    store.put_dir(adapter_dir, v2)
    cache = tmp_path / "cache"
    registry = AdapterRegistry(inference_base, 16, cache)
    first = await registry.adapter_for(_resolved(v1, 11))
    second = await registry.adapter_for(_resolved(v2, 12))
    assert (first.path, second.path) == (str(cache / "11"), str(cache / "12"))
    assert first.name != second.name and registry.validations == 2
    assert not any(p.name.startswith(".") for p in cache.iterdir())  # no half-fetched folder

    # a restarted replica finds version 11 in its cache even with the bucket emptied, and still
    # validates it before first use
    store.delete(v1)
    restarted = AdapterRegistry(inference_base, 16, cache)
    again = await restarted.adapter_for(_resolved(v1, 11))
    assert again.path == first.path and restarted.validations == 1


async def test_bad_adapters_in_the_bucket_are_refused(s3_bucket, adapter_dir, inference_base,
                                                      tmp_path):
    store = ArtifactStore(f"s3://{s3_bucket}/artifacts")
    pickled = store.uri("jobs", "ft_p", "output")
    store.put_dir(adapter_dir, pickled)
    store.write_bytes(f"{pickled}/adapter_model.bin", b"a pickle that runs code")
    wrong_rank = store.uri("jobs", "ft_r", "output")
    store.put_dir(adapter_dir, wrong_rank)
    registry = AdapterRegistry(inference_base, 2, tmp_path / "cache")  # rank 4 > 2

    with pytest.raises(errors.FailedPrecondition, match="pickle"):
        await registry.adapter_for(_resolved(pickled, 21))
    # listed, refused by name, never downloaded
    assert (tmp_path / "cache" / "21" / "adapter_model.bin").read_bytes() == b""
    with pytest.raises(errors.FailedPrecondition, match="rank 4 exceeds"):
        await registry.adapter_for(_resolved(wrong_rank, 22))
    with pytest.raises(errors.FailedPrecondition, match="no adapter files"):
        await registry.adapter_for(_resolved(store.uri("jobs", "ft_none", "output"), 23))
    # verdicts on immutable versions are kept: no second fetch
    validations = registry.validations
    with pytest.raises(errors.FailedPrecondition):
        await registry.adapter_for(_resolved(pickled, 21))
    assert registry.validations == validations
