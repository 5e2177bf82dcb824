"""A small client of Airflow's REST API v2 (token auth) for the pipeline page."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from doodle_lib.settings import Settings

TIMEOUT_SECONDS = 5


class AirflowUnavailable(RuntimeError):
    """Airflow cannot be reached or refuses the login; the message says which."""


class AirflowClient:
    """Logs in with the configured user, keeps the token, and logs in again when it expires."""

    def __init__(self, settings: Settings):
        self.base = settings.airflow_api
        self.user = settings.airflow_user
        self.password = settings.airflow_password
        self.password_file = settings.storage_dir / "airflow" / "simple_auth_manager_passwords.json.generated"
        self._token: str | None = None
        self._lock = threading.Lock()

    def get(self, path: str) -> dict:
        """GET a REST API path as JSON, logging in first, and again once if the token has expired."""
        try:
            return self._request(path, token=self._token or self._login())
        except urllib.error.HTTPError as error:
            if error.code != 401:
                raise AirflowUnavailable(f"Airflow answered {error.code} for {path}") from None
        try:
            return self._request(path, token=self._login())
        except urllib.error.HTTPError as error:
            raise AirflowUnavailable(f"Airflow answered {error.code} for {path}") from None

    def _login(self) -> str:
        with self._lock:
            body = {"username": self.user, "password": self.password or self._generated_password()}
            try:
                self._token = self._request("/auth/token", body=body)["access_token"]
            except urllib.error.HTTPError as error:
                raise AirflowUnavailable(f"Airflow refused the login of {self.user!r} ({error.code})") from None
            return self._token

    def _generated_password(self) -> str:
        path = Path(self.password_file)
        if not path.exists():
            raise AirflowUnavailable("no Airflow password: set DOODLE_AIRFLOW_PASSWORD")
        return json.loads(path.read_text()).get(self.user, "")

    def _request(self, path: str, token: str | None = None, body: dict | None = None) -> dict:
        request = urllib.request.Request(self.base + path, data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError:
            raise
        except (OSError, ValueError) as error:
            raise AirflowUnavailable(f"Airflow at {self.base} is unreachable ({error})") from None


def quote(value: str) -> str:
    """A run id as one URL path segment (run ids hold ':' and '+')."""
    return urllib.parse.quote(value, safe="")
