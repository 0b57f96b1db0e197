"""The service over the real engine on a real library built from a tiny search (with a router)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_support import live_server

from modmerge.library import build_library
from modmerge.reuse import ReuseEngine, RouterConfig, fit_router
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.serve import ServeSettings, create_app
from modmerge.zoo.store import ZooStore

N = 6


@pytest.fixture(scope="module")
def built(tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_lib")
    store = ZooStore(tiny_zoo.root.parent.parent)
    recipe = SearchRecipe(zoo="tiny", budget=4, population=2, validation_limit=16, test_limit=16,
                          surrogate=False, init="random")
    run_search_recipe(recipe, root / "run", source=store.load(recipe.source.zoo))
    router, report = fit_router(tiny_zoo, RouterConfig.for_source(tiny_zoo, epochs=3, per_task=64), test_limit=16)
    build_library(root / "run", root / "lib", source=store.load("tiny"), router=(router.to_state(), report["config"]))
    return root / "lib", store


@pytest.mark.slow  # the fixture runs a small search (the test itself takes about a second)
def test_http_answers_equal_the_engine_and_batch_across_requests(built, tiny_zoo, client):
    lib_dir, store = built  # the library holds no backbone weights: routing features come from the zoo
    engine = ReuseEngine(lib_dir, budget=float("inf"), source=store.load("tiny"))
    reference = ReuseEngine(lib_dir, config_id=engine.config.id, source=store.load("tiny"))
    tasks = tiny_zoo.tasks[:2]
    texts = {t: list(tiny_zoo.task_data(t)["test"]["inputs"][:N]) for t in tasks}
    gate, original = threading.Event(), engine.predict
    held = threading.Event()

    def gated(inputs, tasks=None):  # hold the first call so the next requests queue together
        held.set()
        gate.wait(10)
        return original(inputs, tasks)

    engine.predict = gated
    settings = ServeSettings(queue_size=4, batch_window_ms=20)
    with live_server(create_app(engine, settings)) as url:
        assert client.get(f"{url}/healthz").json()["config"] == engine.config.id
        configs = client.get(f"{url}/v1/configs").json()
        assert [c["id"] for c in configs["configurations"] if c["selected"]] == [engine.config.id]
        assert all("storage_cost" in c for c in configs["configurations"])

        def post(payload):
            return client.post(f"{url}/v1/predict", json=payload)

        with ThreadPoolExecutor(3) as pool:
            warm = pool.submit(post, {"inputs": [{"text": texts[tasks[0]][0]}]})
            assert held.wait(10)
            oracle = pool.submit(post, {"inputs": [{"text": s} for s in texts[tasks[0]]], "task": tasks[0]})
            routed = pool.submit(post, {"inputs": [{"text": s} for s in texts[tasks[1]]]})
            while client.get(f"{url}/healthz").json()["queue_depth"] < 2:
                pass
            gate.set()
            answers = [f.result() for f in (warm, oracle, routed)]
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        stats = client.get(f"{url}/v1/stats").json()
        wrong = post({"inputs": [{"image": str(lib_dir / "manifest.json")}]})
    assert stats["batches"] == 2 and stats["recent_batches"][1] == {"requests": 2, "inputs": 2 * N}
    expected_oracle = reference.predict([{"text": s} for s in texts[tasks[0]]], tasks=[tasks[0]] * N)
    expected_routed = reference.predict([{"text": s} for s in texts[tasks[1]]])
    assert answers[1].json()["outputs"] == expected_oracle
    assert answers[2].json()["outputs"] == expected_routed
    assert {o["task"] for o in answers[1].json()["outputs"]} == {tasks[0]}
    # an image sent to a text library: the engine's one-line refusal comes back as 400
    assert wrong.status_code == 400 and "text" in wrong.json()["error"]
