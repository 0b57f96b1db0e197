"""The service over HTTP on loopback: round trip, validation, limits, discovery endpoints."""

from __future__ import annotations

import json

from modmerge.serve.settings import ServeError, ServeSettings


def test_predict_round_trip_keeps_input_order(serve, client):
    url, engine = serve()
    texts = ["abc", "de", "fghij", "k", "lm"]
    r = client.post(f"{url}/v1/predict", json={"inputs": [{"text": t} for t in texts]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["config"] == "c1"
    assert [o["label"] for o in body["outputs"]] == [len(t) for t in texts]
    assert [o["task"] for o in body["outputs"]] == ["a", "b", "a", "a", "b"]
    assert body["outputs"][0]["chain"] == "ch-a"
    assert engine.calls == [([{"text": t} for t in texts], None)]


def test_oracle_task_is_passed_per_input(serve, client):
    url, engine = serve()
    r = client.post(f"{url}/v1/predict", json={"inputs": [{"text": "x"}, {"text": "yy"}], "task": "b"})
    assert r.status_code == 200, r.text
    assert [o["task"] for o in r.json()["outputs"]] == ["b", "b"]
    assert engine.calls[0][1] == ["b", "b"]


def test_wrong_fields_answer_422_with_a_message(serve, client):
    url, _ = serve()
    cases = [
        ({"inputs": [{"txt": "hello"}]}, "inputs.0.txt: Extra inputs are not permitted"),
        ({"inputs": [{"text": "a"}], "budget": 3}, "budget: Extra inputs are not permitted"),
        ({"inputs": []}, "inputs: List should have at least 1 item"),
        ({"inputs": [{"text": "a", "image": "/x.png"}]}, "inputs.0: give exactly one of 'text', 'image' or 'image_b64'"),
        ({}, "inputs: Field required"),
        ({"inputs": [{"text": "a"}], "task": "zzz"}, "task: unknown task 'zzz' (tasks: a, b)"),
    ]
    for payload, message in cases:
        r = client.post(f"{url}/v1/predict", json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert r.json()["error"].startswith(message), (payload, r.json())
    r = client.post(f"{url}/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]


def test_image_paths_outside_the_root_are_refused(serve, client, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(b"png")
    (tmp_path / "secret.png").write_bytes(b"png")
    url, engine = serve(image_root=root)
    secret = str(tmp_path / "secret.png")
    r = client.post(f"{url}/v1/predict", json={"inputs": [{"image": secret}]})
    # the same answer as for a missing file: nothing tells that the secret exists
    assert r.status_code == 400
    assert r.json()["error"] == f"inputs.0.image: no readable image file {secret!r} under the image root"
    r = client.post(f"{url}/v1/predict", json={"inputs": [{"image": str(root / "ok.png")}]})
    assert r.status_code == 200, r.text
    assert engine.calls[-1][0] == [{"image": str((root / "ok.png").resolve())}]


def test_uploaded_images_reach_the_engine(serve, client):
    url, engine = serve()
    r = client.post(f"{url}/v1/predict", json={"inputs": [{"image_b64": "iVBORw=="}]})
    assert r.status_code == 200, r.text
    assert engine.calls[-1][0] == [{"image_b64": "iVBORw=="}]


def test_oversized_body_answers_413_by_length_and_by_stream(serve, client):
    url, engine = serve(max_body_bytes=1000)
    big = {"inputs": [{"text": "x" * 2000}]}
    r = client.post(f"{url}/v1/predict", json=big)
    assert r.status_code == 413
    assert "over the limit of 1000 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        data = json.dumps(big).encode()
        for i in range(0, len(data), 256):
            yield data[i : i + 256]

    r = client.post(f"{url}/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "more than 1000 bytes arrived" in r.json()["error"]
    assert engine.calls == []
    assert client.post(f"{url}/v1/predict", json={"inputs": [{"text": "small"}]}).status_code == 200


def test_too_many_inputs_names_the_limit(serve, client):
    url, engine = serve(max_inputs=4)
    r = client.post(f"{url}/v1/predict", json={"inputs": [{"text": "a"}] * 5})
    assert r.status_code == 413
    assert r.json()["error"] == "inputs: 5 inputs, over the limit of 4 per request (max_inputs)"
    assert engine.calls == []


def test_engine_refusal_is_400_and_spares_batch_mates(serve, client):
    url, _ = serve()
    r = client.post(f"{url}/v1/predict", json={"inputs": [{"text": "ok"}, {"text": "bad"}]})
    assert r.status_code == 400
    assert r.json()["error"] == "inputs: the text 'bad' is refused by the fake engine"


def test_healthz_configs_stats_and_openapi(serve, client):
    url, _ = serve(queue_size=7)
    assert client.get(f"{url}/healthz").json() == {"status": "ok", "config": "c1", "queue_depth": 0, "queue_size": 7}
    configs = client.get(f"{url}/v1/configs").json()
    assert configs["selected"] == "c1"
    assert [(c["id"], c["selected"]) for c in configs["configurations"]] == [("c0", False), ("c1", True)]
    assert configs["configurations"][0]["storage_cost"] == 0.3
    client.post(f"{url}/v1/predict", json={"inputs": [{"text": "a"}, {"text": "b"}]})
    stats = client.get(f"{url}/v1/stats").json()
    assert (stats["requests"], stats["inputs"], stats["batches"]) == (1, 2, 1)
    schema = client.get(f"{url}/openapi.json").json()
    assert {"/v1/predict", "/v1/configs", "/healthz", "/v1/stats"} <= set(schema["paths"])
    assert "post" in schema["paths"]["/v1/predict"]
    assert {"PredictRequest", "Input", "PredictResponse"} <= set(schema["components"]["schemas"])


def test_settings_refuse_remote_hosts_and_inconsistent_limits():
    for fields, message in (
        ({"host": "0.0.0.0"}, "settings: host '0.0.0.0' is not a loopback address"),
        ({"max_inputs": 10, "max_batch": 5}, "max_batch (5) must be at least max_inputs (10)"),
        ({"queue_size": 0}, "queue_size: Input should be greater than or equal to 1"),
    ):
        try:
            ServeSettings.parse(**fields)
        except ServeError as err:
            assert message in str(err), str(err)
        else:
            raise AssertionError(fields)
    assert ServeSettings.parse(host="0.0.0.0", allow_remote=True, no_auth=True).host == "0.0.0.0"
    assert ServeSettings.parse(host="::1").host == "::1"
