"""A full artifact store (a real tmpfs that fills, mounted for the test): CREATE's snapshot write
fails with the disk's own error, the job is not recorded, the partial files are removed, and a
job that fits is created afterwards. (The error's status, RESOURCE_EXHAUSTED with a message
that says why, is the error-mapping interceptor's: tests/integration/common/test_server.py.)"""

import errno
import os

import pytest
from control_components import control_components
from control_testbed import SERVICE_TOKEN, files_under, load_rows, word_tokenizers
from mounts import small_tmpfs

from services.control.core.jobs import CreateJob


@pytest.fixture
def full_store(tmp_path):
    with small_tmpfs(tmp_path / "artifacts", "64k") as mount:
        yield mount


def test_a_full_artifact_store_refuses_create_and_keeps_everything_consistent(
        tmp_path, full_store, tiny_base, dispatcher):
    with control_components(tmp_path / "home", tiny_base, service_token=SERVICE_TOKEN,
                            dispatcher=dispatcher, tokenizers=word_tokenizers(), port=50999,
                            artifact_root=str(full_store)) as control:
        key = control.config.bootstrap_key_file.read_text().strip()
        admin = control.store.run(lambda tx: tx.accounts.authenticate(key))
        # 600 KB of training text that does not compress, for a 64 KB store
        load_rows(control, admin.account_id, "big",
                  [{"prompt": f"question {i} " + os.urandom(40_000).hex(), "completion": f"answer {i}"}
                   for i in range(8)])
        with pytest.raises(OSError) as err:
            control.fine_tuning.create(admin, CreateJob(
                model="too_big", base_model="tiny-base",
                training_query="SELECT prompt, completion FROM big"))
        assert err.value.errno == errno.ENOSPC
        assert control.store.run(lambda tx: tx.jobs.page(admin.account_id, 10)) == []
        assert files_under(full_store) == set()   # the partial snapshot is gone
        assert dispatcher.submitted == []

        load_rows(control, admin.account_id, "small",
                  [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(4)])
        job = control.fine_tuning.create(admin, CreateJob(
            model="fits", base_model="tiny-base",
            training_query="SELECT prompt, completion FROM small"))
        assert control.store.run(lambda tx: [j.id for j in tx.jobs.page(admin.account_id,
                                                                          10)]) == [job.id]
