"""The web console in a real browser: Debian's chromium driven by Playwright against the real
local stack (Ray, control, inference on vLLM), served by the inference process at /console.

Covers: signing in; creating a job through the form and following it to SUCCESS; the loss
chart rendering with points; a playground request; a key without privileges seeing no other
role's jobs. With FINETUNE_CONSOLE_SCREENSHOTS=<folder> (docs/console for the README) each page
is saved there as a PNG.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium "
                              "(apt-get install chromium); Playwright cannot download one"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the dev extra's playwright")
expect = sync_api.expect

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
TABLE = "console.public.word_codes"
MODEL = "console.public.word_code_model"
BASE_MODEL = "smollm2-135m-instruct"
CATEGORIES = {
    "QF-17": ["apple", "banana", "cherry", "mango", "peach", "plum"],
    "ZK-82": ["tiger", "horse", "rabbit", "eagle", "shark", "wolf"],
    "LM-35": ["red", "blue", "green", "yellow", "purple", "pink"],
    "VR-64": ["hammer", "wrench", "drill", "saw", "chisel", "pliers"],
}
TRAINING_QUERY = f"SELECT prompt, completion FROM {TABLE} WHERE split = 'train'"
VALIDATION_QUERY = f"SELECT prompt, completion FROM {TABLE} WHERE split = 'validation'"
EVALUATION_QUERY = f"SELECT prompt, completion AS label FROM {TABLE} WHERE split = 'validation'"
JOB_TIMEOUT_MS = 900_000


def word_rows() -> list[dict[str, str]]:
    return [{"prompt": f"Which code goes with the word '{word}'?", "completion": code,
             "split": "validation" if i == len(words) - 1 else "train"}
            for code, words in CATEGORIES.items() for i, word in enumerate(words)]


def shot(page, name: str) -> None:
    folder = os.environ.get("FINETUNE_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def sign_in(page, console: str, key: str) -> None:
    page.goto(f"{console}/signin")
    page.fill("#api_key", key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_url(f"{console}/jobs")


@pytest.fixture(scope="module")
def console(stack) -> str:
    return f"{stack.http_url}/console"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def admin_page(browser, console, stack):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, console, stack.admin_key())
    yield page
    context.close()
    assert not errors, f"the pages raised in the browser: {errors}"


@pytest.fixture(scope="module")
def trained_job(admin_page, console, client):
    """A job created through the form (preview, estimate, options, start) and followed on its
    page until it ends; returns its id and the statuses the page showed on the way."""
    page = admin_page
    client.load_rows(TABLE, word_rows(), replace=True)
    page.goto(f"{console}/jobs/new")
    page.fill("#model", MODEL)
    page.select_option("#base_model", BASE_MODEL)
    page.fill("#training_query", TRAINING_QUERY)
    page.click("#preview-button")
    expect(page.locator("#preview-table")).to_contain_text("Which code goes with the word",
                                                           timeout=30_000)
    page.fill("#validation_query", VALIDATION_QUERY)
    # Tiny on purpose: 20 rows, one epoch of 5 steps.
    page.fill("#max_epochs", "1")
    page.fill("#batch_size", "4")
    page.fill("#learning_rate", "0.001")
    page.fill("#seed", "1")
    page.click("text=Evaluate against the base model at the end")   # 4 rows, each model
    page.fill("#evaluation_query", EVALUATION_QUERY)
    page.click("#estimate-button")
    estimate = page.locator("#estimate-table")
    # Control runs both queries and tokenizes every row (the first time loads the tokenizer).
    expect(estimate.locator('[data-fact="training rows"]')).to_have_text("20", timeout=120_000)
    expect(estimate.locator('[data-fact="validation rows"]')).to_have_text("4")
    trained_tokens = int(estimate.locator('[data-fact="trained tokens"]').inner_text()
                         .replace(",", ""))
    assert trained_tokens > 0
    assert float(estimate.locator('[data-fact="credits"]').inner_text()) > 0
    shot(page, "create-job")
    page.click("#start-button")
    page.wait_for_url(re.compile(rf"{re.escape(console)}/jobs/ft_[0-9a-f-]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    seen: list[str] = []
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        try:
            status = page.locator("#job-status").inner_text(timeout=30_000)
        except sync_api.Error:   # the page reloading itself as the job ends
            continue
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("SUCCESS", "ERROR", "CANCELLED"):
            break
        page.wait_for_timeout(1000)
    return job_id, seen, trained_tokens


def test_signing_in_with_an_api_key(browser, console, stack, client):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        page.goto(f"{console}/jobs")
        expect(page).to_have_url(f"{console}/signin")
        shot(page, "signin")
        page.fill("#api_key", "ft_not_a_key")
        page.click("#signin-form button[type=submit]")
        expect(page.locator("#signin-error")).to_contain_text("API key")
        assert not context.cookies()
        sign_in(page, console, stack.admin_key())
        expect(page.locator("#signed-in-as")).to_have_text(client.whoami().user_name)
        cookie = next(c for c in context.cookies() if c["name"] == "finetune_console_key")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""          # out of the scripts' reach
        page.click("text=Sign out")
        expect(page).to_have_url(f"{console}/signin")
        page.goto(f"{console}/models")
        expect(page).to_have_url(f"{console}/signin")
    finally:
        context.close()


def test_creating_a_job_through_the_form_and_following_it_to_success(admin_page, console,
                                                                      trained_job, client):
    job_id, seen, estimated = trained_job
    page = admin_page
    assert seen[-1] == "SUCCESS", (seen, page.locator("#job-live").inner_text())
    assert set(seen[:-1]) <= {"PENDING", "IN_PROGRESS"}
    expect(page.locator("#job-percent")).to_have_text("100%")
    assert client.get_job(job_id).trained_tokens > 0 and estimated > 0
    options = page.locator("#options")
    expect(options).to_contain_text("precision")
    expect(options).to_contain_text("training precision")
    expect(page.locator("#lineage")).to_contain_text(TRAINING_QUERY)
    assert re.search(r"[0-9a-f]{64}", page.locator("#lineage").inner_text())
    expect(page.locator("#events")).to_contain_text("job.succeeded")
    evaluation = page.locator("#evaluation")
    expect(evaluation).to_contain_text("macro_f1 (primary)")
    expect(evaluation).to_contain_text("accuracy")
    shot(page, "job")
    page.goto(f"{console}/jobs?state=SUCCESS")
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_contain_text("SUCCESS")
    expect(row).to_contain_text(MODEL)
    shot(page, "jobs")
    page.goto(f"{console}/jobs?state=CANCELLED")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(0)


def test_the_loss_chart_renders_with_points(admin_page, console, trained_job):
    job_id, _, _ = trained_job
    page = admin_page
    page.goto(f"{console}/jobs/{job_id}")
    expect(page.locator("#loss-source")).to_contain_text("From training_results.csv")
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-series", "2")      # training and validation loss
    points = int(chart.get_attribute("data-points"))
    assert points >= 6, points                               # 5 steps + 1 validation point
    painted = page.evaluate("""() => {
        const canvas = document.querySelector('#loss-chart canvas');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width,
                                                            canvas.height).data;
        let painted = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
        return {painted, width: canvas.width, height: canvas.height};
    }""")
    assert painted["width"] > 300 and painted["height"] > 200, painted
    assert painted["painted"] > 1000, painted


def test_running_a_playground_request(admin_page, console, trained_job):
    page = admin_page
    page.goto(f"{console}/playground?model={MODEL}")
    expect(page.locator("#pane-base .pane-model")).to_have_text(BASE_MODEL)
    page.fill("#pg-prompt", "Which code goes with the word 'apple'?")
    page.fill("#pg-max-tokens", "12")
    page.click("#pg-run")
    for pane in ("tuned", "base"):
        expect(page.locator(f"#pane-{pane}")).to_have_attribute("data-done", "true",
                                                                 timeout=120_000)
        usage = page.locator(f"#pane-{pane} .usage").inner_text()
        assert re.search(r"\d+ prompt \+ \d+ completion = \d+ tokens", usage), usage
        assert int(page.locator(f"#pane-{pane}").get_attribute("data-total-tokens")) > 0
        assert page.locator(f"#pane-{pane} .output").inner_text().strip()
    shot(page, "playground")
    # The request is counted: it reaches the usage page (the usage outbox sends it shortly).
    deadline = time.monotonic() + 60
    while True:
        page.goto(f"{console}/usage")
        if page.locator(f'#usage-by-model tr[data-model="{MODEL}"]').count() or \
                time.monotonic() > deadline:
            break
        page.wait_for_timeout(2000)
    expect(page.locator(f'#usage-by-model tr[data-model="{MODEL}"]')).to_have_count(1)
    expect(page.locator("#usage-tokens")).to_have_attribute("data-points", re.compile(r"[1-9]"))
    shot(page, "usage")
    page.goto(f"{console}/models")
    row = page.locator(f'tr[data-model="{MODEL}"]')
    expect(row.locator("a[download]", has_text="training_results.csv")).to_have_count(1)
    shot(page, "models")


def test_a_key_without_privileges_sees_no_other_roles_jobs(browser, console, client,
                                                           trained_job):
    job_id, _, _ = trained_job
    client.create_user("console_viewer")
    key = client.create_api_key(user="console_viewer").key
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        sign_in(page, console, key)
        expect(page.locator("#signed-in-as")).to_have_text("console_viewer")
        expect(page.locator("#no-jobs")).to_be_visible()
        assert job_id not in page.content()
        shot(page, "no-privileges")
        page.goto(f"{console}/jobs/{job_id}")
        expect(page.locator(".error")).to_contain_text("permission denied")
        page.goto(f"{console}/models")
        expect(page.locator(f'tr[data-model="{MODEL}"]')).to_have_count(0)
    finally:
        context.close()
