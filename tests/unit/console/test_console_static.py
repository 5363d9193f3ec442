"""The console works offline: its scripts are served from the package, with their licenses."""

from services.console.rendering import STATIC_DIR

VENDORED = ("vendor/htmx/htmx.min.js", "vendor/uplot/uPlot.iife.min.js",
            "vendor/uplot/uPlot.min.css", "console.js", "console.css")


def test_vendored_files_are_served_with_their_licenses(browser):
    for path in VENDORED:
        response = browser.get(f"/console/static/{path}")
        assert response.status_code == 200 and len(response.content) > 500, path
    for package in ("htmx", "uplot"):
        assert (STATIC_DIR / "vendor" / package / "LICENSE").stat().st_size > 100


def test_pages_load_nothing_from_elsewhere(admin):
    for path in ("/console/signin", "/console/jobs", "/console/usage", "/console/playground"):
        html = admin.get(path).text
        assert "http://" not in html and "https://" not in html, path
        assert "/console/static/vendor/htmx/htmx.min.js" in html
