"""Each page renders what control answered, and shows control's refusals as they are."""

import json
import re

import pytest
from console_fakes import ADMIN, DONE_JOB, RUNNING_JOB, TUNED, VIEWER, sign_in
from fastapi.testclient import TestClient

from finetune.control.v1 import jobs_pb2
from services.common.errors import PermissionDenied, Unavailable
from services.openai_api.app import build_app
from services.openai_api.context import ApiContext


def chart_data(html: str, element_id: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>',
                      html, re.S)
    assert match, f"no {element_id} in the page"
    return json.loads(match.group(1))


# -- jobs ----------------------------------------------------------------------------------------

def test_jobs_lists_every_page_of_the_callers_jobs_newest_first(admin):
    html = admin.get("/console/jobs").text
    assert html.index(RUNNING_JOB) < html.index(DONE_JOB)   # the fake pages one job at a time
    assert "IN_PROGRESS" in html and "50%" in html and "2 / 4" in html
    assert 'hx-trigger="every 2s"' in html                   # live: polled


def test_jobs_filter_by_state(admin):
    html = admin.get("/console/jobs", params={"state": "SUCCESS"}).text
    assert DONE_JOB in html and RUNNING_JOB not in html
    assert 'hx-get="/console/jobs/rows?state=SUCCESS"' in html
    rows = admin.get("/console/jobs/rows", params={"state": "CANCELLED"}).text
    assert "No jobs to show in state CANCELLED" in rows
    assert "<html" not in rows                               # a fragment for htmx


def test_a_key_without_privileges_sees_no_other_roles_jobs(browser, control):
    sign_in(browser, VIEWER)
    html = browser.get("/console/jobs").text
    assert DONE_JOB not in html and RUNNING_JOB not in html and 'id="no-jobs"' in html
    page = browser.get(f"/console/jobs/{DONE_JOB}")
    assert page.status_code == 403
    assert "requires OWNERSHIP" in page.text and "permission denied" in page.text


# -- a job ---------------------------------------------------------------------------------------

def test_a_finished_jobs_page_draws_its_loss_from_training_results_csv(admin):
    html = admin.get(f"/console/jobs/{DONE_JOB}").text
    chart = chart_data(html, "loss-data")
    assert chart["x"] == [1.0, 2.0, 3.0, 4.0]
    assert [s["label"] for s in chart["series"]] == ["training loss", "validation loss"]
    assert chart["series"][0]["values"] == [2.5, 1.75, 1.0, 0.5]
    assert chart["series"][1]["values"] == [None, 1.9, None, 0.8]
    assert "From training_results.csv" in html
    assert "hx-trigger" not in html.split('id="job-live"')[1].split(">")[0]   # no polling


def test_the_job_page_shows_options_precision_lineage_events_and_evaluations(admin):
    html = admin.get(f"/console/jobs/{DONE_JOB}").text
    assert "training precision fp32 (measured: bf16 0.6x)" in html
    assert "worker ready" in html.split('id="events"')[1]       # detail left to the log
    assert "q_proj, v_proj" in html and "0.0002" in html
    assert "SELECT prompt, completion FROM shop.t" in html and "ab" * 32 in html
    assert "(holdout of the training rows)" in html and "cd" * 32 in html
    evaluation = html.split('id="evaluation"')[1].split("</table>")[0]
    assert evaluation.index("macro_f1") < evaluation.index("accuracy")   # primary first
    assert "+0.8500" in evaluation and "+0.9000" in evaluation
    assert "cancel-button" not in html                        # finished: nothing to cancel


def test_a_running_job_charts_its_progress_events_and_polls(admin):
    html = admin.get(f"/console/jobs/{RUNNING_JOB}").text
    chart = chart_data(html, "loss-data")
    assert chart["x"] == [2.0] and chart["series"][0]["values"] == [1.75]
    assert "From the job&#39;s progress events" in html
    assert f'hx-get="/console/jobs/{RUNNING_JOB}/live"' in html and "cancel-button" in html
    live = admin.get(f"/console/jobs/{RUNNING_JOB}/live")
    assert live.status_code == 200 and 'id="job-status"' in live.text


def test_the_live_part_reloads_the_page_once_the_job_has_ended(admin):
    response = admin.get(f"/console/jobs/{DONE_JOB}/live")
    assert response.status_code == 204 and response.headers["hx-refresh"] == "true"


def test_a_results_file_control_refuses_falls_back_to_events_with_its_message(admin, control):
    control.results_csv = "step,loss\n1,2\n"
    html = admin.get(f"/console/jobs/{DONE_JOB}").text
    assert "training_results.csv could not be read" in html and "no training_loss" in html
    assert chart_data(html, "loss-data")["x"] == [2.0]


def test_cancel_reloads_and_a_refusal_shows_controls_message(admin, control):
    response = admin.post(f"/console/jobs/{RUNNING_JOB}/cancel", headers={"hx-request": "true"})
    assert response.status_code == 204 and response.headers["hx-refresh"] == "true"
    assert control.jobs[RUNNING_JOB].status == jobs_pb2.CANCELLED
    again = admin.post(f"/console/jobs/{RUNNING_JOB}/cancel", headers={"hx-request": "true"})
    assert again.status_code == 409
    assert "is already finished" in again.text and "<html" not in again.text


def test_an_unknown_job_is_controls_not_found(admin):
    response = admin.get("/console/jobs/ft_nope")
    assert response.status_code == 404 and "job ft_nope does not exist" in response.text


# -- create a job --------------------------------------------------------------------------------

FORM = {"model": "shop.public.new", "base_model": "tiny-base",
        "training_query": "SELECT prompt, completion FROM shop.t", "max_epochs": "1",
        "batch_size": "4", "learning_rate": "0.001", "task_type": "INSTRUCTION",
        "request_id": "req-1"}


def test_the_form_offers_the_base_models_and_a_request_id(admin):
    html = admin.get("/console/jobs/new").text
    assert 'value="tiny-base"' in html and "context 2048" in html
    assert re.search(r'name="request_id" value="[0-9a-f-]{36}"', html)


def test_preview_shows_the_first_rows_escaped(admin, control):
    response = admin.post("/console/jobs/new/preview", data=FORM,
                          headers={"hx-request": "true"})
    assert response.status_code == 200
    assert "&lt;b&gt;apple&lt;/b&gt;" in response.text and "<b>apple" not in response.text
    assert control.previewed == [(FORM["training_query"], 5)]


def test_a_refused_preview_shows_controls_message(admin):
    response = admin.post("/console/jobs/new/preview",
                          data={**FORM, "training_query": "SELECT * FROM nope.public.t"},
                          headers={"hx-request": "true"})
    assert response.status_code == 403 and "USAGE on database nope is required" in response.text


def test_estimate_shows_rows_tokens_credits_and_truncation(admin, control):
    html = admin.post("/console/jobs/new/estimate", data=FORM,
                      headers={"hx-request": "true"}).text
    assert '<td data-fact="training rows">20</td>' in html
    assert '<td data-fact="trained tokens">6,000</td>' in html
    assert '<td data-fact="credits">0.012</td>' in html
    assert '<td data-fact="truncated training rows">3</td>' in html
    assert "3 rows are truncated" in html
    assert control.estimated[0].options.max_epochs == 1


def test_an_invalid_estimate_shows_the_services_message(admin):
    response = admin.post("/console/jobs/new/estimate",
                          data={**FORM, "training_query": "SELECT prompt FROM missing"},
                          headers={"hx-request": "true"})
    assert response.status_code == 400
    assert "must return prompt and completion columns" in response.text


def test_start_creates_the_job_with_the_forms_options_and_goes_to_its_page(admin, control):
    response = admin.post("/console/jobs/new", data=FORM, headers={"hx-request": "true"})
    assert response.status_code == 204 and response.headers["hx-redirect"] == "/console/jobs/ft_new"
    request = control.created[0]
    assert (request.model, request.base_model, request.request_id) == \
        ("shop.public.new", "tiny-base", "req-1")
    assert (request.options.max_epochs, request.options.batch_size) == (1, 4)
    assert request.options.learning_rate == pytest.approx(0.001)
    plain = admin.post("/console/jobs/new", data=FORM)   # without JavaScript
    assert plain.status_code == 303 and plain.headers["location"] == "/console/jobs/ft_new"


def test_start_refused_shows_the_services_message_in_the_form(admin):
    response = admin.post("/console/jobs/new", data={**FORM, "model": ""},
                          headers={"hx-request": "true"})
    assert response.status_code == 400 and "model name is required" in response.text


def test_a_number_field_without_a_number_is_named(admin, control):
    response = admin.post("/console/jobs/new", data={**FORM, "max_epochs": "two"},
                          headers={"hx-request": "true"})
    assert response.status_code == 400 and "max_epochs must be a whole number" in response.text
    assert control.created == []


# -- models --------------------------------------------------------------------------------------

def test_models_show_lineage_evaluations_usage_and_the_owners_downloads(admin):
    html = admin.get("/console/models").text
    row = html.split(f'data-model="{TUNED}"')[1].split("</tr>")[0]
    assert f'href="/console/jobs/{DONE_JOB}"' in row and "tiny-base" in row
    assert "macro_f1 0.850" in row
    assert "4 requests" in row and "160 tokens" in row
    assert f'href="/console/models/{TUNED}/artifacts/training_results.csv"' in row


def test_a_model_the_caller_does_not_own_offers_no_downloads(browser):
    sign_in(browser, VIEWER)
    row = browser.get("/console/models").text.split(f'data-model="{TUNED}"')[1]
    assert "/artifacts/" not in row.split("</tr>")[0] and "owner only" in row
    assert "requires OWNERSHIP" in row                        # control's reason, as a tooltip


def test_download_streams_the_artifact_as_a_file(admin, control):
    response = admin.get(f"/console/models/{TUNED}/artifacts/training_results.csv")
    assert response.status_code == 200 and response.text == control.results_csv
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == \
        'attachment; filename="shop.public.router-training_results.csv"'


def test_a_refused_download_is_a_page_with_controls_message(browser):
    sign_in(browser, VIEWER)
    response = browser.get(f"/console/models/{TUNED}/artifacts/training_results.csv")
    assert response.status_code == 403 and "requires OWNERSHIP" in response.text
    assert "<html" in response.text


# -- usage ---------------------------------------------------------------------------------------

def test_usage_charts_tokens_and_credits_by_model_and_day(admin):
    html = admin.get("/console/usage").text
    tokens = chart_data(html, "usage-tokens-data")
    assert tokens["time"] is True and len(tokens["x"]) == 7   # a week up to 3 March
    by_label = {s["label"]: s["values"][-3:] for s in tokens["series"]}   # 1-3 March
    assert by_label[TUNED] == [120.0, 0.0, 40.0]
    assert by_label["tiny-base"] == [60.0, 0.0, 0.0]
    assert by_label[f"{TUNED} (fine-tuning)"] == [1234.0, 0.0, 0.0]
    credits = chart_data(html, "usage-credits-data")
    assert {s["label"]: s["values"][-3:] for s in credits["series"]}[TUNED] == \
        pytest.approx([0.001, 0.0, 0.0004])
    table = html.split('id="usage-by-model"')[1].split("</table>")[0]
    assert table.count("<tr data-model=") == 2 and ">4<" in table


# -- errors --------------------------------------------------------------------------------------

def test_an_unavailable_control_is_said_so(admin, control):
    control.failure = Unavailable("the control service is unavailable, retry later")
    response = admin.get("/console/usage")
    assert response.status_code == 503 and "unavailable" in response.text


def test_unexpected_errors_are_a_generic_page(control, core):
    app = build_app(ApiContext(control, {}, core))
    with TestClient(app, follow_redirects=False, raise_server_exceptions=False) as client:
        sign_in(client)
        control.failure = RuntimeError("secret detail at /var/lib/x")
        response = client.get("/console/models")
    assert response.status_code == 500
    assert "internal error" in response.text and "secret detail" not in response.text


def test_a_privilege_refusal_is_shown_not_decided_here(admin, control):
    control.failure = PermissionDenied("USAGE on model shop.public.router is required")
    response = admin.get("/console/models")
    assert response.status_code == 403
    assert "USAGE on model shop.public.router is required" in response.text
    assert ADMIN in control.keys_seen


def test_pages_carry_security_headers_and_are_not_cached(admin):
    response = admin.get("/console/jobs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
