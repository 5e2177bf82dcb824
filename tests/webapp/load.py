"""A small closed-loop load generator on keep-alive connections, recording every answer."""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse


@dataclass
class Answer:
    at: float  # time.monotonic() when the answer arrived
    status: int  # 0: the connection failed
    version: str | None


@dataclass
class Load:
    """`threads` clients posting `body` to `path` until stopped."""

    url: str
    path: str
    body: dict
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._client, daemon=True) for _ in range(self.threads)]

    def __enter__(self) -> "Load":
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _client(self) -> None:
        address = urlparse(self.url)
        payload = json.dumps(self.body)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        while not self._stop.is_set():
            try:
                connection.request("POST", self.path, payload, {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = json.loads(response.read())
                self.answers.append(Answer(time.monotonic(), response.status, data.get("model_version")))
            except (OSError, http.client.HTTPException, ValueError):
                self.answers.append(Answer(time.monotonic(), 0, None))
                connection.close()
                connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        connection.close()

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def first_time_all_serve(self, version: str, after: float) -> float | None:
        """When answers started to come only from `version` (every later answer too), or None."""
        last_other = max((a.at for a in self.answers if a.version != version), default=after)
        later = [a for a in self.answers if a.at > last_other]
        return last_other if later else None
