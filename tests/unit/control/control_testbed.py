"""The control unit tests' test bed: a fake cluster behind the JobDispatcher Protocol and table
loaders. (Imported by conftest.py and the tests; the name is unique across the test tree.) The
components themselves come from tests/control_components.py's `control_components`, the one
factory the unit and integration tests share."""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from services.common import interceptors

from services.control.app import Components
from services.control.core.access_control import create_account
from services.control.data.uploads import FileFormat, TableUpload
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus
from services.control.domain.names import qualified_name

SERVICE_TOKEN = "test-service-token"


@dataclass
class FakeDispatcher:
    """A cluster in memory: tests set each job's state; submits are recorded."""

    jobs: dict[str, ClusterJob] = field(default_factory=dict)
    submitted: list[tuple[str, str, dict]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    fail_submit: Exception | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, job_id, spec_uri, env):
        if self.fail_submit is not None:
            raise self.fail_submit
        with self.lock:
            self.submitted.append((job_id, spec_uri, dict(env)))
            self.jobs.setdefault(job_id, ClusterJob(ClusterJobStatus.PENDING))

    def status(self, job_id):
        return self.jobs.get(job_id)

    def stop(self, job_id):
        self.stopped.append(job_id)
        if job_id in self.jobs and self.jobs[job_id].status in (
                ClusterJobStatus.PENDING, ClusterJobStatus.RUNNING):
            self.jobs[job_id] = ClusterJob(ClusterJobStatus.STOPPED, "stopped by user")

    def logs_tail(self, job_id, max_lines=40):
        return self.logs.get(job_id, "")

    def set(self, job_id, status: ClusterJobStatus, message=""):
        self.jobs[job_id] = ClusterJob(status, message)


class WordTokenizer:
    """A tokenizer without a model: each whitespace-separated word is one token (ids from a
    growing vocabulary), BOS 1 before a prompt, EOS 0; no chat template, so prompts are the
    turns joined by newlines (services.common.chat_format's fallback)."""

    chat_template = None
    bos_token_id = 1
    eos_token_id = 0

    def __init__(self):
        self._vocabulary: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [self._vocabulary.setdefault(w, len(self._vocabulary) + 2) for w in text.split()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def word_tokenizers():
    """build_components' `tokenizers`: a WordTokenizer per base model, with the calls logged."""
    cache: dict[str, WordTokenizer] = {}

    def get(base, path):
        return cache.setdefault(base.name, WordTokenizer())
    return get


def load_rows(control: Components, account_id: str, table: str, rows: list[dict]) -> None:
    upload = TableUpload(control.catalog.spool_dir, None, 1 << 20)
    try:
        upload.add_rows(rows)
        control.catalog.load_table(account_id, qualified_name(table), upload.finish(),
                                   replace=True)
    finally:
        upload.discard()


def load_file(control: Components, account_id: str, table: str, data: bytes,
              fmt: FileFormat) -> None:
    upload = TableUpload(control.catalog.spool_dir, fmt, 1 << 20)
    try:
        upload.add_chunk(data)
        control.catalog.load_table(account_id, qualified_name(table), upload.finish(),
                                   replace=True)
    finally:
        upload.discard()


def instruction_rows(n: int) -> list[dict]:
    return [{"prompt": f"question {i}", "completion": f"answer {i}", "extra": "x"}
            for i in range(n)]


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()} if path.exists() else set()


@contextlib.contextmanager
def acting_as(principal):
    """Run servicer methods as if the AuthInterceptor had authenticated `principal`."""
    token = interceptors._principal.set(principal)
    try:
        yield
    finally:
        interceptors._principal.reset(token)


def new_account(control: Components, account_id: str):
    """A second account and its administrator (ACCOUNTADMIN there): (principal, key)."""
    key = control.store.run(lambda tx: create_account(
        tx, account_id, "someone", datetime.now(timezone.utc)).key)
    return control.store.run(lambda tx: tx.accounts.authenticate(key)), key


def new_user(control: Components, account_id: str, name: str, roles: tuple[str, ...] = (),
             default_role: str | None = None):
    """A user of an account holding `roles` (which must exist): (principal, key)."""
    def work(tx):
        now = datetime.now(timezone.utc)
        user_id = tx.accounts.create_user(account_id, name, now)
        for role in roles:
            found = tx.access.role(account_id, role)
            tx.access.grant_role(account_id, found.id, "USER", user_id, "test", now)
        if default_role or roles:
            tx.accounts.set_default_role(
                user_id, tx.access.role(account_id, default_role or roles[0]).id)
        return tx.accounts.create_key(user_id, now)[1]

    key = control.store.run(work)
    return control.store.run(lambda tx: tx.accounts.authenticate(key)), key


def write_manifest(control: Components, job, **overrides) -> dict:
    manifest = {"job_id": job.id, "trained_tokens": 4321, "training_loss": 0.42,
                "validation_loss": 0.55, "epochs": 3, "steps": 9, "training_rows": 6,
                "validation_rows": 2, "truncated_rows": 0,
                "files": ["adapter_model.safetensors", "adapter_config.json",
                          "training_results.csv", "loss_curve.png"]}
    manifest.update(overrides)
    for name in manifest["files"]:
        control.artifacts.write_bytes(f"{job.output_uri}/{name}", b"content of " + name.encode())
    control.artifacts.write_bytes(f"{job.output_uri}/manifest.json",
                                  json.dumps(manifest).encode())
    return manifest


def succeed(control: Components, dispatcher: FakeDispatcher, job, **manifest) -> None:
    """Let the fake cluster finish a job with a manifest and reconcile."""
    write_manifest(control, job, **manifest)
    dispatcher.set(job.id, ClusterJobStatus.SUCCEEDED, "Job finished successfully.")
    control.reconciler.reconcile_once()
