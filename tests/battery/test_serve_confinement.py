"""Serve confinement: image paths, bearer tokens, and connections that idle or crawl.

With --allow-remote and no --image-root a client could make the server read any image file on
its disk, and 400 vs 422 told existing files from missing ones; the service had no
authentication; a connection that sent nothing, or its head a byte at a time, was held forever.
"""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest
from click.testing import CliRunner
from serve_battery_support import (
    FakeTextEngine,
    b64,
    grey_png,
    image_engine,
    running,
    seconds_until_closed,
)

from modmerge.cli import main
from modmerge.serve import ServeError, ServeSettings, create_app
from modmerge.serve.connections import server_config

TOKEN = "t0k3n-for-the-battery-0123456789"


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def serving(engine, **fields):
    settings = ServeSettings(**fields)
    return running(server_config(create_app(engine, settings), settings))


def test_remote_without_an_image_root_reads_no_paths(tmp_path, client):
    (tmp_path / "ok.png").write_bytes(grey_png(7))
    engine = image_engine(tmp_path / "backbone")
    with serving(engine, allow_remote=True, no_auth=True) as url:
        paths = [str(tmp_path / "ok.png"), "/etc/passwd", "/no/such.png"]
        answers = [client.post(f"{url}/v1/predict", json={"inputs": [{"image": p}]}) for p in paths]
        upload = client.post(f"{url}/v1/predict", json={"inputs": [{"image_b64": b64(grey_png(7))}]})
    assert {r.status_code for r in answers} == {400}
    assert {r.json()["error"] for r in answers} == {
        "inputs.0.image: this server reads no image paths (it allows remote clients and has no --image-root); "
        "upload the file's bytes as image_b64"}
    assert len(engine.calls) == 1  # only the upload reached the engine
    assert upload.status_code == 200 and upload.json()["outputs"][0]["label"] == 7


def test_missing_unreadable_special_and_outside_paths_get_one_answer(tmp_path, client, monkeypatch):
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(grey_png(9))
    (tmp_path / "secret.png").write_bytes(grey_png(1))
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (root / "sub").mkdir()
    os.mkfifo(root / "pipe.png")
    unreadable = root / "locked.png"
    unreadable.write_bytes(grey_png(2))
    unreadable.chmod(0)
    probes = [str(tmp_path / "secret.png"), str(root / "missing.png"), str(root / "escape.png"), str(root / "sub"),
              str(root / "pipe.png"), "/etc/passwd", f"{root}/../secret.png", "/dev/zero"]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        probes.append(str(unreadable))
    opened: list[str] = []
    real_open = os.open
    with serving(image_engine(tmp_path / "backbone"), image_root=root) as url:
        monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
        answers = {p: client.post(f"{url}/v1/predict", json={"inputs": [{"image": p}]}) for p in probes}
        monkeypatch.undo()
        assert not {str(root / "pipe.png"), "/dev/zero"} & set(opened)  # refused from a stat: the FIFO blocked nothing
        ok = client.post(f"{url}/v1/predict", json={"inputs": [{"image": str(root / "ok.png")}]})
    for path, r in answers.items():
        assert r.status_code == 400, (path, r.text)
        assert r.json() == {"error": f"inputs.0.image: no readable image file {path!r} under the image root"}
    assert ok.status_code == 200 and ok.json()["outputs"][0]["label"] == 9


def test_a_token_is_required_when_set_and_checked_before_the_body(client):
    with serving(FakeTextEngine(), token=TOKEN, max_body_bytes=1000) as url:
        payload = {"inputs": [{"text": "abc"}]}
        none = client.post(f"{url}/v1/predict", json=payload)
        wrong = client.post(f"{url}/v1/predict", json=payload, headers={"Authorization": f"Bearer {TOKEN[:-1]}x"})
        basic = client.post(f"{url}/v1/predict", json=payload, headers={"Authorization": f"Basic {TOKEN}"})
        big = client.post(f"{url}/v1/predict", json={"inputs": [{"text": "x" * 5000}]})
        right = client.post(f"{url}/v1/predict", json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
        stats = client.get(f"{url}/v1/stats")
        health = client.get(f"{url}/healthz")
    for r in (none, basic, big, stats):  # a stranger's oversized body is not even read: 401, not 413
        assert r.status_code == 401, r.text
        assert r.json() == {"error": "authorization: this server needs 'Authorization: Bearer <token>'"}
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401 and wrong.json() == {"error": "authorization: wrong bearer token"}
    assert right.status_code == 200 and right.json()["outputs"][0]["label"] == 3
    assert health.status_code == 200  # liveness probes need no token


@pytest.mark.parametrize(("fields", "message"), [
    ({"allow_remote": True}, "allow_remote needs a bearer token (--token-file or $MODMERGE_TOKEN), or --no-auth"),
    ({"token": "short"}, "token: 5 characters, fewer than 16"),
    ({"token": TOKEN, "no_auth": True}, "give a token or no_auth, not both"),
])
def test_settings_refuse_remote_serving_without_a_decision_on_auth(fields, message):
    with pytest.raises(ServeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        ServeSettings.parse(**fields)
    assert ServeSettings.parse(allow_remote=True, token=TOKEN).accepts_image_paths is False


def test_cli_token_sources_and_refusals(tmp_path):
    def serve(*args, env=None):
        return CliRunner().invoke(main, ["serve", str(tmp_path / "nolib"), "--config", "c0", *args], env=env or {})

    refused = serve("--allow-remote", env={"MODMERGE_TOKEN": ""})
    assert refused.exit_code == 2 and "error: settings: allow_remote needs a bearer token" in refused.output
    assert "Traceback" not in refused.output
    missing = serve("--allow-remote", "--token-file", str(tmp_path / "none.txt"))
    assert missing.exit_code == 2 and f"error: {tmp_path / 'none.txt'}: token file not found" in missing.output
    (tmp_path / "empty.txt").write_text("\n")
    empty = serve("--token-file", str(tmp_path / "empty.txt"))
    assert empty.exit_code == 2 and "the token file is empty" in empty.output
    (tmp_path / "token.txt").write_text(TOKEN + "\n")
    for args, env in ((["--token-file", str(tmp_path / "token.txt")], None), ([], {"MODMERGE_TOKEN": TOKEN}),
                      (["--no-auth"], None)):
        # settings accepted: the command gets as far as opening the (missing) library
        result = serve("--allow-remote", *args, env=env)
        assert result.exit_code == 2 and "nolib/manifest.json: missing" in result.output, result.output


TIMEOUTS = {"keep_alive_s": 0.5, "header_timeout_s": 0.5, "body_timeout_s": 0.5}


def connect(url):
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def read_until_closed(sock, limit):
    """Everything the peer sends until it closes ``sock``; fails after ``limit`` seconds."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while chunk := sock.recv(4096):
        data += chunk
        assert time.monotonic() < deadline, "connection still open"
    return data


def test_idle_slow_head_and_slow_body_connections_are_closed(client):
    with serving(FakeTextEngine(), **TIMEOUTS) as url:
        with connect(url) as silent:  # opens and sends nothing
            assert (seconds_until_closed(silent, 5) or 99) < 3
        with connect(url) as slow:  # a request head a few bytes at a time, never finished
            started = time.monotonic()
            closed = False
            for piece in (b"POST /v1/pre", b"dict HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n") * 10:
                try:
                    slow.sendall(piece)
                except OSError:
                    closed = True
                    break
                if seconds_until_closed(slow, 0.2) is not None:
                    closed = True
                    break
            assert closed and time.monotonic() - started < 3
        with connect(url) as crawl:  # a complete head, then a body that never finishes
            crawl.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"inputs\"")
            answer = read_until_closed(crawl, 5)
            assert answer.startswith(b"HTTP/1.1 408") and b"(body_timeout_s)" in answer
        with connect(url) as kept:  # one good request, then idle past keep-alive
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            kept.settimeout(5)
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            assert (seconds_until_closed(kept, 5) or 99) < 3
        # prompt clients are unaffected
        assert client.post(f"{url}/v1/predict", json={"inputs": [{"text": "ab"}]}).status_code == 200
