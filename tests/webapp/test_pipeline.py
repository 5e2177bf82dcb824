"""The pipeline page when Airflow cannot be asked (the flywheel test reads it from a real Airflow)."""
import pytest

from doodle_lib.settings import Settings
from tests.services import free_port
from webapp import create_app


@pytest.fixture
def client(tmp_path):
    def make(**fields):
        settings = Settings(storage_dir=tmp_path, **fields)
        return create_app({"MODEL_WATCH": False, "SETTINGS": settings}).test_client()
    return make


def test_no_password_is_named(client):
    answer = client().get("/api/pipeline")
    assert answer.status_code == 503 and "DOODLE_AIRFLOW_PASSWORD" in answer.json["error"]


def test_unreachable_airflow_is_a_503_with_the_address(client):
    url = f"http://127.0.0.1:{free_port()}"
    answer = client(airflow_url=url, airflow_password="x").get("/api/pipeline")
    assert answer.status_code == 503 and url in answer.json["error"] and "unreachable" in answer.json["error"]
    page = client(airflow_url=url, airflow_password="x").get("/pipeline")
    assert page.status_code == 200 and "unreachable" in page.get_data(as_text=True)


def test_a_run_that_waited_in_vain_says_it_trained_nothing():
    from webapp.pipeline import note

    waited_in_vain = [{"task_id": "check_params", "state": "success"},
                      {"task_id": "wait_for_feedback", "state": "skipped"}, {"task_id": "train", "state": "skipped"}]
    assert note(waited_in_vain) == "nothing trained: too little feedback arrived in time"
    training = [{"task_id": "wait_for_feedback", "state": "success"}, {"task_id": "train", "state": "running"}]
    assert note(training) is None
