"""The Python client is importable under the project's name, and under its old path."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import finetune.client
from services.common import protogen


def test_client_importable_as_finetune_client():
    from finetune.client import Client, FinetuneClient
    from services.cli.client import FinetuneClient as OldPath

    assert Client is FinetuneClient is OldPath
    assert set(finetune.client.__all__) == {"Client", "FinetuneClient"}


def test_client_module_is_beside_the_generated_code_but_not_generated():
    # protogen deletes what matches its stale-file glob before regenerating: never the client.
    module = Path(finetune.client.__file__).resolve()
    assert module.parent == protogen.ROOT / "finetune"
    assert not fnmatch.fnmatch(module.name, protogen.GENERATED)
    assert module not in set(protogen.ROOT.rglob(protogen.GENERATED))
