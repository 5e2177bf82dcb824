"""FeedbackSensor: wait, deferred (no worker slot), until enough complete drawings wait in the feedback folder or a
proposed category is ready to be trained."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from doodle_lib import feedback, proposals
from doodle_lib.settings import get_settings


def ready_proposals() -> list[str]:
    """Names of the proposed categories the next run would train: enough drawings, approved if required, and not a
    name production knows already (the snapshot leaves those out: a run for them alone would have nothing to add)."""
    settings = get_settings()
    if not any(proposal.ready for proposal in proposals.list_all(settings)):
        return []  # the usual case, answered without asking the registry
    from doodle_lib import retraining

    return [proposal.name for proposal in proposals.ready(settings, retraining.production_categories(settings))]


class FeedbackTrigger(BaseTrigger):
    """Counts complete drawings every `poll_seconds` in the triggerer; fires with their keys once there are enough or
    a proposal is ready, or at the deadline."""

    def __init__(self, folder: str, threshold: int, poll_seconds: float, deadline: float):
        super().__init__()
        self.folder, self.threshold, self.poll_seconds, self.deadline = folder, threshold, poll_seconds, deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # The deadline is absolute, so a trigger restarted by another triggerer keeps the run's timeout.
        kwargs = {"folder": self.folder, "threshold": self.threshold, "poll_seconds": self.poll_seconds, "deadline": self.deadline}
        return "feedback_sensor.FeedbackTrigger", kwargs

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            refs = await asyncio.to_thread(feedback.complete, Path(self.folder))
            ready = await asyncio.to_thread(ready_proposals)
            if len(refs) >= self.threshold or ready:
                yield TriggerEvent({"status": "ready", "keys": [ref.key for ref in refs], "proposals": ready})
                return
            if time.time() >= self.deadline:
                yield TriggerEvent({"status": "timeout", "count": len(refs)})
                return
            await asyncio.sleep(self.poll_seconds)


class FeedbackSensor(BaseSensorOperator):
    """Returns the keys of the complete drawings once at least `threshold` wait or a proposed category is ready (the
    snapshot takes its drawings); skips after `wait_minutes`."""

    template_fields = ("threshold", "wait_minutes")
    ui_color = "#f4d35e"

    def __init__(self, *, threshold: int | str, wait_minutes: float | str, **kwargs):
        super().__init__(**kwargs)
        self.threshold, self.wait_minutes = threshold, wait_minutes

    def poke(self, context) -> PokeReturnValue:
        keys = [ref.key for ref in feedback.complete(get_settings().feedback_dir)]
        ready = ready_proposals()
        if ready:
            self.log.info("proposed categories ready to be trained: %s", ready)
        return PokeReturnValue(is_done=len(keys) >= self._needed() or bool(ready), xcom_value=keys)

    def execute(self, context) -> list[str]:
        settings, wait = get_settings(), float(self.wait_minutes)
        now = self.poke(context)
        if now.is_done:
            return self._counted(now.xcom_value)
        if wait <= 0:
            raise AirflowSkipException(f"only {len(now.xcom_value)} of {self.threshold} drawings wait and no proposal is ready")
        trigger = FeedbackTrigger(
            str(settings.feedback_dir), self._needed(), settings.feedback_poll_seconds, time.time() + 60 * wait
        )
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timedelta(minutes=wait + 5))

    def execute_complete(self, context, event: dict) -> list[str]:
        if event["status"] != "ready":
            raise AirflowSkipException(
                f"only {event['count']} of {self.threshold} drawings and no ready proposal after {self.wait_minutes} minutes: nothing to do"
            )
        return self._counted(event["keys"])

    def _needed(self) -> int:
        """The threshold as an int: a whole number may come as 3.0 (from REST or CLI callers), rendered as "3.0"."""
        from doodle_lib.retraining import whole_number

        return whole_number("threshold", self.threshold)

    def _counted(self, keys: list[str]) -> list[str]:
        self.log.info("%d complete drawings (threshold %s): %s ... %s", len(keys), self.threshold, keys[:1], keys[-1:])
        return keys
