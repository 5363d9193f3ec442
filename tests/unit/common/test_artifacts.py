import pytest

from services.common.artifacts import ArtifactStore


def test_round_trip_and_listing(tmp_path):
    store = ArtifactStore(str(tmp_path / "art"))
    uri = store.uri("jobs", "ft_1", "output", "manifest.json")
    store.write_bytes(uri, b"{}")
    assert store.exists(uri)
    assert store.read_bytes(uri) == b"{}"
    assert store.list(store.uri("jobs", "ft_1", "output")) == ["manifest.json"]
    assert store.list(store.uri("missing")) == []
    assert store.local_path(uri) == tmp_path / "art" / "jobs" / "ft_1" / "output" / "manifest.json"


def test_dirs_copy_both_ways(tmp_path):
    store = ArtifactStore("file://" + str(tmp_path / "art"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 3_000_000)
    (src / "b.txt").write_text("b")
    uri = store.uri("models", "m1")
    store.put_dir(src, uri)
    assert store.list(uri) == ["a.bin", "b.txt"]
    out = store.get_dir(uri, tmp_path / "out")
    assert (out / "a.bin").read_bytes() == b"a" * 3_000_000
    assert b"".join(store.iter_chunks(store.uri("models", "m1", "a.bin"), 1 << 20)) == b"a" * 3_000_000
    store.delete(uri)
    assert not store.exists(uri)


def test_refuses_uris_outside_the_store(tmp_path):
    store = ArtifactStore(str(tmp_path / "art"))
    with pytest.raises(ValueError):
        store.read_bytes("file:///etc/passwd")
