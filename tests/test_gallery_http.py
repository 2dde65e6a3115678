"""Gallery pages over HTTP against a real gunicorn server with many runs stored."""

from __future__ import annotations

import re

import pytest
import requests

from bench.gallery_render import store_jobs


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory("embedded", workers=0, api=False)
    store_jobs(f"sqlite:///{stack.home / 'latentforge.db'}", 300)
    stack.start_api()
    return stack


def test_runs_page_with_many_runs_stays_up_and_paginates(stack):
    # Regression: this page once crashed the gunicorn worker (SIGSEGV) after a few loads.
    for _ in range(15):
        assert requests.get(stack.url + "/", timeout=30).status_code == 200
    assert stack.procs["api"].poll() is None and "SIGSEGV" not in stack.log("api")

    seen, url = [], stack.url + "/"
    while url:
        html = requests.get(url, timeout=30).text
        seen += re.findall(r'<tr data-job-id="([0-9a-f-]{36})"', html)
        more = re.search(r'id="next-page" href="([^"]+)"', html)
        url = stack.url + more.group(1).replace("&amp;", "&") if more else None
    assert len(seen) == len(set(seen)) == 300
    assert 'loading="lazy"' in html


def test_unknown_filters_and_missing_runs_get_an_html_error_page(stack):
    page = requests.get(stack.url + "/?state=finished", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 400 and "text/html" in page.headers["Content-Type"]
    assert "state: must be one of queued" in page.text and "got &#39;finished&#39;" in page.text
    missing = requests.get(stack.url + "/runs/00000000-0000-0000-0000-000000000000", headers={"Accept": "text/html"}, timeout=30)
    assert missing.status_code == 404 and "no job with id" in missing.text and "Traceback" not in missing.text
    assert requests.get(stack.url + "/compare?ids=", headers={"Accept": "text/html"}, timeout=30).status_code == 400
