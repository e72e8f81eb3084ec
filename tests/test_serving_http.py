"""`ctrscale serve` as a user runs it: a real server process on 127.0.0.1, a real HTTP client.
HTTP scores equal the Scorer's and offline eval's; every bad-input class gets its status and a message naming the
field, and never harms the next request; a bundle swapped in under load loses no request."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_serving import bundles, offline_and_requests  # noqa: F401  (a fixture and a helper)

from ctrscale.serving import Scorer, export_bundle
from ctrscale.serving.replay import RawDecoder, random_run

TOKEN = "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, source, *args):
        self.port = free_port()
        env = {**os.environ, "CTRSCALE_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "ctrscale.cli", "serve", str(source), "--port",
                                      str(self.port), "--threads", "1", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read()}")
            try:
                if self.call("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server not ready within 120 s")

    def call(self, method, path, body=None, headers=None, token=TOKEN):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
             **(headers or {})}
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        conn.close()
        ctype = r.getheader("content-type", "")
        return r.status, (json.loads(raw) if "json" in ctype else raw.decode())

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def server_of():
    started = []

    def start(source, *args):
        started.append(Server(source, *args))
        return started[-1]
    yield start
    for s in started:
        s.stop()


@pytest.mark.parametrize("name", ["suan", "est"])
def test_http_equals_scorer_equals_offline(name, ml1m, bundles, server_of, tmp_path):
    run, bundle = bundles(name)
    prob, requests = offline_and_requests(ml1m, run, tmp_path)
    srv = server_of(bundle)
    scorer = Scorer(bundle)
    for req, rows in requests[:20]:
        status, out = srv.call("POST", "/v1/score", req)
        assert status == 200, out
        local = scorer.score(req).scores
        assert out["request_id"] == req["request_id"] and out["model"] == scorer.name
        np.testing.assert_allclose(out["scores"], local, atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["scores"], [prob[r] for r in rows], atol=1e-5, rtol=0)
        assert set(out["timing_ms"]) == {"parse", "features", "user", "candidates", "total"}
    _, again = srv.call("POST", "/v1/score", requests[0][0])
    assert again["cache"] == "hit"
    status, metrics = srv.call("GET", "/metrics")
    assert status == 200 and 'ctrscale_requests_total{status="200"} 21' in metrics
    assert 'ctrscale_cache_events_total{event="hit"} 1' in metrics
    n = sum(len(r["candidates"]["item_id"]) for r, _ in requests[:20]) + len(requests[0][0]["candidates"]["item_id"])
    assert f"ctrscale_candidates_total {n}" in metrics and "ctrscale_request_seconds_bucket" in metrics
    status, model = srv.call("GET", "/v1/model")
    assert status == 200 and model["name"] == name and model["example_request"]["candidates"]
    assert {f["name"] for f in model["fields"]} >= {"user_id", "item_id", "history.time"}
    status, out = srv.call("POST", "/v1/score", model["example_request"])  # the example it shows is servable
    assert status == 200 and len(out["scores"]) == 2


def test_bad_input_statuses_and_messages(ml1m, bundles, server_of):
    _, bundle = bundles("din")
    srv = server_of(bundle, "--max-candidates", "5", "--max-history", "400", "--max-body-mib", "0.05")
    req = max((r for r, _ in RawDecoder(ml1m).requests("test", np.arange(300))),
              key=lambda r: len(r["candidates"]["item_id"]))
    assert len(req["candidates"]["item_id"]) >= 3
    req = {**req, "candidates": {k: v[:3] for k, v in req["candidates"].items()},
           "history": {k: v[-300:] for k, v in req["history"].items()}}
    status, good = srv.call("POST", "/v1/score", req)
    assert status == 200
    many = {k: v * 2 for k, v in req["candidates"].items()}
    cases = [
        ("no token", dict(body=req, token=None), 401, "bearer token"),
        ("wrong token", dict(body=req, token="nope"), 401, "bearer token"),
        ("not JSON", dict(body=b"user=1", headers={"Content-Type": "text/plain"}), 415, "application/json"),
        ("malformed JSON", dict(body=b'{"user": '), 422, "malformed JSON"),
        ("a JSON list", dict(body=[1, 2]), 422, "body: expected a JSON object"),
        ("nested too deep", dict(body=b"[" * 100_000 + b"]" * 100_000), 413, "limit of"),
        ("nested deep", dict(body=b'{"user": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"), 422, "malformed JSON"),
        ("too many candidates", dict(body={**req, "candidates": many}), 413, "limit of 5"),
        ("history too long", dict(body={**req, "history": {k: (v * 401)[:401] for k, v in req["history"].items()}}),
         413, "limit of 400"),
        ("body too large", dict(body=b"{" + b" " * 60_000 + b"}"), 413, "limit of"),
        ("wrong type", dict(body={**req, "user": {**req["user"], "gender": {"a": 1}}}), 422,
         "user.gender: expected a string or a number, got an object"),
        ("missing field", dict(body={k: v for k, v in req.items() if k != "candidates"}), 422,
         "candidates: missing"),
        ("unknown field", dict(body={**req, "context": {**req["context"], "hr": "1"}}), 422,
         "context.hr: unknown field"),
    ]
    for what, kw, status, message in cases:
        got, out = srv.call("POST", "/v1/score", **kw)
        assert got == status, (what, out)
        assert message in out["error"], (what, out)
        got, again = srv.call("POST", "/v1/score", req)
        assert got == 200 and again["scores"] == good["scores"], f"{what} harmed the next request"
    _, metrics = srv.call("GET", "/metrics")
    assert 'ctrscale_requests_total{status="500"}' not in metrics
    assert 'ctrscale_requests_total{status="413"} 4' in metrics


def test_swap_under_load_loses_no_request(ml1m, bundles, server_of, tmp_path):
    run_a, bundle_a = bundles("suan")
    other = random_run(tmp_path / "runs", ml1m, "suan", "name=other", seed=1)
    bundle_b = export_bundle(other, tmp_path / "b")
    requests = [r for r, _ in RawDecoder(ml1m).requests("test", np.arange(400))]
    srv = server_of(bundle_a)
    name_a, name_b = Scorer(bundle_a).name, Scorer(bundle_b).name
    results, stop = [], threading.Event()

    def client(k):
        i = k
        while not stop.is_set():
            results.append(srv.call("POST", "/v1/score", requests[i % len(requests)]))
            i += 3
    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    status, out = srv.call("POST", "/v1/admin/reload", {"path": str(bundle_b)})
    assert status == 200 and out["model"] == name_b
    corrupt = tmp_path / "corrupt"
    import shutil
    shutil.copytree(bundle_b, corrupt)
    (corrupt / "weights.pt").write_bytes(b"not weights")
    status, out = srv.call("POST", "/v1/admin/reload", {"path": str(corrupt)})
    assert status == 409 and "weights.pt: checksum mismatch" in out["error"] and name_b in out["error"]
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    statuses = [s for s, _ in results]
    models = [o["model"] for s, o in results if s == 200]
    assert statuses and set(statuses) == {200}, "a request failed during the swap"
    assert models[0] == name_a and models[-1] == name_b and set(models) == {name_a, name_b}
    # SIGHUP reloads the source served now (bundle_b), replaced in place by another export
    export_bundle(run_a, bundle_b, overwrite=True)
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 60
    while srv.call("GET", "/readyz")[1]["model"] != name_a and time.time() < deadline:
        time.sleep(0.2)
    assert srv.call("GET", "/readyz")[1]["model"] == name_a


def test_serve_refuses_what_it_cannot_load(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctrscale.cli", "serve", str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "neither a bundle" in r.stderr and "Traceback" not in r.stderr
