"""The playground: the page, and COMPLETE streamed through the same core as the OpenAI door."""

import json

from console_fakes import BASE, TUNED, VIEWER, sign_in

STREAM = {"accept": "text/event-stream"}


def events(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ")]


def test_the_page_offers_fine_tuned_models_with_their_base(admin):
    html = admin.get("/console/playground", params={"model": TUNED}).text
    assert f'<option value="{TUNED}" data-base="{BASE}" selected>' in html
    assert f'<option value="{BASE}" data-base=""' in html
    assert 'id="pane-tuned"' in html and 'id="pane-base"' in html


def test_a_completion_streams_deltas_then_usage(admin, core):
    response = admin.post("/console/playground/stream", headers=STREAM,
                          json={"model": TUNED, "prompt": "apple?", "max_tokens": 8,
                                "temperature": 0})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response.text)
    assert "".join(e.get("delta", "") for e in got) == "QF-17 is the code"
    assert got[-1] == {"finish_reason": "stop",
                       "usage": {"prompt_tokens": 7, "completion_tokens": 4,
                                 "total_tokens": 11}}
    key, inp = core.calls[0]
    assert key.startswith("ft_admin") and (inp.model, inp.prompt, inp.max_tokens) == \
        (TUNED, "apple?", 8)


def test_a_refusal_before_the_stream_keeps_its_status_and_message(browser):
    sign_in(browser, VIEWER)
    response = browser.post("/console/playground/stream", headers=STREAM,
                            json={"model": TUNED, "prompt": "apple?"})
    assert response.status_code == 403
    assert response.json()["error"]["message"] == f"USAGE on model {TUNED} is required"


def test_a_failure_mid_stream_is_an_error_event(admin, core):
    core.fail_after = 2
    got = events(admin.post("/console/playground/stream", headers=STREAM,
                            json={"model": TUNED, "prompt": "apple?"}).text)
    assert got[-1] == {"error": "USAGE on the model was revoked", "code": "permission_denied"}
    assert [e["delta"] for e in got[:-1]] == ["QF-17", " is"]


def test_the_cores_input_checks_answer_invalid_requests(admin):
    response = admin.post("/console/playground/stream", headers=STREAM,
                          json={"model": TUNED, "prompt": "hi", "temperature": 9})
    assert response.status_code == 400 and "temperature" in response.json()["error"]["message"]
    empty = admin.post("/console/playground/stream", headers=STREAM,
                       json={"model": TUNED, "prompt": ""})
    assert empty.status_code == 400 and empty.json()["error"]["message"].startswith("prompt")


def test_a_stream_without_a_key_asks_to_sign_in_in_json(browser):
    response = browser.post("/console/playground/stream", headers=STREAM,
                            json={"model": TUNED, "prompt": "hi"})
    assert response.status_code == 401 and "sign in" in response.json()["error"]["message"]
