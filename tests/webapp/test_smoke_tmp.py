import json, time
from tests.conftest import fixture_drawings
def test_smoke(client, versions, settings):
    r = client.get('/api/model'); print(r.json)
    cat, row, strokes = fixture_drawings()[30]
    t=time.time(); r = client.post('/api/predict', json={'strokes': strokes}); print(time.time()-t, cat, r.status_code, r.json['predictions'])
    r = client.post('/api/feedback', json={'strokes': strokes, 'label': 'cat', 'predicted_label': r.json['predictions'][0]['label'], 'model_version': '1'}); print(r.status_code, r.json)
    print(list(settings.feedback_dir.rglob('*')))
    print(client.get('/').data.decode()[:600])
