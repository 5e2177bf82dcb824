"""Browser fixtures: the web app under gunicorn, and Debian's chromium driven by Playwright."""
from __future__ import annotations

import shutil

import pytest

from tests.webapp.conftest import logged_models, trained_models, versions  # noqa: F401 - shared fixtures
from tests.webapp.serving import app_env, gunicorn_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


@pytest.fixture
def webapp_url(settings, versions, tmp_path):  # noqa: F811
    with gunicorn_app(app_env(settings, poll_seconds=1), tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()
