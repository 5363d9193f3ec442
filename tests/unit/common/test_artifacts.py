"""The artifact store's API, over a local folder and over S3 (a real moto server on loopback)."""

import pytest

from services.common.artifacts import ArtifactStore


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "file":
        return ArtifactStore(str(tmp_path / "art"))
    bucket = request.getfixturevalue("s3_bucket")
    return ArtifactStore(f"s3://{bucket}/artifacts")


def test_round_trip_and_listing(store):
    uri = store.uri("jobs", "ft_1", "output", "manifest.json")
    assert not store.exists(uri)
    store.write_bytes(uri, b"{}")
    store.write_bytes(store.uri("jobs", "ft_1", "output", "nested", "x.txt"), b"x")
    assert store.exists(uri)
    assert store.read_bytes(uri) == b"{}"
    # files only, not the nested folder
    assert store.list(store.uri("jobs", "ft_1", "output")) == ["manifest.json"]
    assert store.list(store.uri("missing")) == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes(store.uri("jobs", "ft_1", "absent.json"))


def test_streams_lines_and_chunks(store):
    uri = store.uri("jobs", "ft_2", "data", "training.jsonl")
    with store.open(uri, "wb") as out:
        for i in range(3):
            out.write(f'{{"row": {i}}}\n'.encode())
    with store.open(uri, "rb") as f:
        assert [line for line in f] == [b'{"row": 0}\n', b'{"row": 1}\n', b'{"row": 2}\n']
    big = store.uri("jobs", "ft_2", "big.bin")
    store.write_bytes(big, b"a" * 3_000_000)
    chunks = list(store.iter_chunks(big, 1 << 20))
    assert [len(c) for c in chunks] == [1 << 20, 1 << 20, 3_000_000 - (2 << 20)]


def test_dirs_copy_both_ways_and_delete(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 3_000_000)
    (src / "b.txt").write_text("b")
    uri = store.uri("models", "m1")
    store.put_dir(src, uri)
    assert store.list(uri) == ["a.bin", "b.txt"]
    out = store.get_dir(uri, tmp_path / "out")
    assert (out / "a.bin").read_bytes() == b"a" * 3_000_000
    assert (out / "b.txt").read_text() == "b"
    store.delete(uri)
    assert not store.exists(uri) and store.list(uri) == []
    with pytest.raises(FileNotFoundError):
        store.get_dir(uri, tmp_path / "again")
    store.delete(uri)  # deleting what is gone is fine


def test_refuses_uris_outside_the_store(store):
    with pytest.raises(ValueError):
        store.read_bytes("file:///etc/passwd")
    with pytest.raises(ValueError):
        store.read_bytes(store.root + "-other/x")


def test_local_path_only_for_a_local_folder(tmp_path):
    local = ArtifactStore(str(tmp_path / "art"))
    uri = local.uri("jobs", "ft_1", "output", "manifest.json")
    assert local.local_path(uri) == tmp_path / "art" / "jobs" / "ft_1" / "output" / "manifest.json"
    assert ArtifactStore("file://" + str(tmp_path / "art")).root == local.root


def test_s3_sees_what_other_writers_add(s3_server, s3_bucket):
    """Another process (the trainer) writes under a prefix this one has listed already."""
    store = ArtifactStore(f"s3://{s3_bucket}/artifacts")
    output = store.uri("jobs", "ft_1", "output")
    store.write_bytes(f"{output}/training_results.csv", b"step\n")
    assert store.list(output) == ["training_results.csv"]
    assert not store.exists(f"{output}/manifest.json")
    s3_server.client().put_object(Bucket=s3_bucket, Key="artifacts/jobs/ft_1/output/manifest.json",
                                  Body=b"{}")
    assert store.list(output) == ["manifest.json", "training_results.csv"]
    assert store.exists(f"{output}/manifest.json")
    assert store.local_path(output) is None


def test_s3_writes_never_create_a_bucket(s3_server, s3_bucket):
    store = ArtifactStore(f"s3://{s3_bucket}-absent/artifacts")
    with pytest.raises(OSError):
        store.write_bytes(store.uri("x.txt"), b"x")
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert f"{s3_bucket}-absent" not in names
