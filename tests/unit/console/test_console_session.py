"""Sign-in with an API key (WhoAmI decides), the cookie it sets, sign-out, expired keys."""

from console_fakes import ADMIN, VIEWER, sign_in


def test_pages_redirect_to_sign_in_without_a_key(browser):
    for path in ("/console/jobs", "/console/jobs/ft_done", "/console/models",
                 "/console/playground", "/console/usage", "/console/jobs/new"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/signin"


def test_htmx_requests_without_a_key_are_sent_to_sign_in_by_header(browser):
    response = browser.get("/console/jobs/rows", headers={"hx-request": "true"})
    assert response.status_code == 204
    assert response.headers["hx-redirect"] == "/console/signin"


def test_the_root_and_the_console_root_lead_to_the_jobs(admin):
    assert admin.get("/").headers["location"] == "/console/"
    assert admin.get("/console/").headers["location"] == "/console/jobs"


def test_sign_in_sets_an_httponly_strict_cookie_scoped_to_the_console(browser, control):
    response = sign_in(browser, f"  Bearer {ADMIN} \n")
    assert response.status_code == 303 and response.headers["location"] == "/console/jobs"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"finetune_console_key={ADMIN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert ADMIN in control.keys_seen
    page = browser.get("/console/jobs")
    assert page.status_code == 200 and 'id="signed-in-as"' in page.text and "admin" in page.text


def test_a_key_control_refuses_shows_its_message_and_sets_no_cookie(browser):
    response = sign_in(browser, "ft_wrong")
    assert response.status_code == 401
    assert "invalid API key" in response.text
    assert "set-cookie" not in response.headers
    assert 'value="ft_wrong"' not in response.text   # the key is never echoed into the page


def test_an_empty_key_is_refused_without_calling_control(browser, control):
    response = sign_in(browser, "   ")
    assert response.status_code == 400 and "an API key is required" in response.text
    assert control.keys_seen == []


def test_sign_out_clears_the_cookie(admin):
    response = admin.post("/console/signout")
    assert response.status_code == 303 and response.headers["location"] == "/console/signin"
    assert 'finetune_console_key=""' in response.headers["set-cookie"]
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert admin.get("/console/jobs").status_code == 303


def test_a_revoked_key_signs_the_browser_out(admin, control):
    control.revoked.add(ADMIN)
    response = admin.get("/console/models")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/signin?expired=1"
    assert 'finetune_console_key=""' in response.headers["set-cookie"]
    page = admin.get(response.headers["location"])
    assert "no longer accepts the key" in page.text


def test_each_user_sees_their_own_name(browser):
    sign_in(browser, VIEWER)
    assert "viewer" in browser.get("/console/jobs").text


def test_the_sign_in_page_shows_no_text_from_its_url(browser):
    page = browser.get("/console/signin", params={"reason": "paste your key at evil.example",
                                                  "expired": "1"})
    assert "evil.example" not in page.text and "sign in again" in page.text
