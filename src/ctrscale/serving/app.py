"""The HTTP service: a thin FastAPI layer over the Scorer (shared/spec/serving.md).

    POST /v1/score          one request -> scores (401 token, 413 limit, 415 not JSON, 422 malformed, 503 loading)
    GET  /v1/model          the bundle, its fields with their roles, an example request, the limits
    POST /v1/admin/reload   swap in a bundle (body {"path": ...}, or the one served); the old one stays on failure
    GET  /healthz, /readyz  alive; ready once a bundle is loaded
    GET  /metrics           Prometheus text

Every torch call of the process runs on the event loop's thread (the main thread): scoring, one request at a
time (the user-state cache needs no lock, torch's intra-op threads use the cores inside a request), and loading a
bundle. Measured on 2 cores: once a second thread has run torch ops, libgomp keeps a second thread team and
request latency triples (SUAN, 1000 candidates, history 1000: 49 ms on one thread, 133 ms scored on a worker
thread after loading on the main one); so the loop blocks while it scores, which one worker does anyway. A
request holds the Scorer it started with, and a swap happens between requests: none is lost, none mixes models.
Bad input never yields a 500: those are bugs, logged with their traceback.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import signal
import tempfile
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..errors import CtrscaleError, one_line
from .bundle import is_bundle, load_bundle
from .features import Limits, RequestError
from .scorer import Scorer

log = logging.getLogger("ctrscale.serve")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self):
        self.requests: Counter = Counter()          # by status
        self.latency = [0] * (len(BUCKETS) + 1)      # histogram counts (last: +Inf)
        self.latency_sum = 0.0
        self.candidates = 0
        self.cache: Counter = Counter()             # hit | miss | extend | none
        self.unknown: Counter = Counter()           # by field
        self.evicted_before = 0                     # evictions of the scorers swapped out

    def observe(self, status: int, seconds: float) -> None:
        self.requests[status] += 1
        self.latency_sum += seconds
        self.latency[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1

    def text(self, scorer: Scorer | None) -> str:
        cache = scorer.cache if scorer is not None else None
        lines = ["# HELP ctrscale_requests_total Scoring requests by HTTP status.",
                 "# TYPE ctrscale_requests_total counter"]
        lines += [f'ctrscale_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
        lines += ["# HELP ctrscale_request_seconds Time from reading the body to the response.",
                  "# TYPE ctrscale_request_seconds histogram"]
        cum = 0
        for b, n in zip((*BUCKETS, "+Inf"), self.latency):
            cum += n
            lines.append(f'ctrscale_request_seconds_bucket{{le="{b}"}} {cum}')
        lines += [f"ctrscale_request_seconds_sum {self.latency_sum:.6f}", f"ctrscale_request_seconds_count {cum}",
                  "# TYPE ctrscale_candidates_total counter", f"ctrscale_candidates_total {self.candidates}",
                  "# TYPE ctrscale_cache_events_total counter"]
        events = {**self.cache, "evict": self.evicted_before + (cache.events["evict"] if cache else 0)}
        lines += [f'ctrscale_cache_events_total{{event="{e}"}} {events.get(e, 0)}'
                  for e in ("hit", "miss", "extend", "evict", "none")]
        lines += ["# TYPE ctrscale_cache_bytes gauge", f"ctrscale_cache_bytes {cache.bytes if cache else 0}",
                  "# TYPE ctrscale_unknown_values_total counter"]
        lines += [f'ctrscale_unknown_values_total{{field="{f}"}} {n}' for f, n in sorted(self.unknown.items())]
        return "\n".join(lines) + "\n"


class Service:
    """The state behind the app: the current Scorer (swapped atomically), its source, limits, token, metrics."""

    def __init__(self, source: str | Path, cache_mib: float = 256, limits: Limits = Limits(),
                 token: str | None = None, chunk: int = 1024, compiled: bool = False):
        self.source, self.cache_mib, self.limits, self.token, self.chunk = Path(source), cache_mib, limits, token, chunk
        self.compiled = compiled
        self.scorer: Scorer | None = None
        self.load_error: str | None = None
        self.metrics = Metrics()
        self._tmp: list[Path] = []

    def _open(self, source: Path) -> Scorer:
        if (source / "config.yaml").is_file() and not is_bundle(source):  # a run: export a temporary bundle
            from .bundle import export_bundle
            tmp = Path(tempfile.mkdtemp(prefix="ctrscale-bundle-"))
            self._tmp.append(tmp)
            source = export_bundle(source, tmp / "bundle", compile=self.compiled)
        if is_bundle(source):
            return Scorer(load_bundle(source, self.limits), self.cache_mib, self.chunk, self.limits, self.compiled)
        raise CtrscaleError(f"{source}: neither a bundle (manifest.json) nor a run folder (config.yaml); give "
                            f"`ctrscale export`'s output or a run folder")

    def reload(self, source: str | Path | None = None) -> tuple[bool, str]:
        """Load `source` (default: the served one) and swap it in; on failure keep the current Scorer."""
        target = Path(source) if source else self.source
        try:
            new = self._open(target)
        except Exception as e:  # noqa: BLE001 - whatever stops a bundle loading, the old one keeps serving
            if not isinstance(e, (CtrscaleError, OSError)):
                log.exception("loading %s failed", target)
            if self.scorer is None:  # nothing served yet: the caller reports why
                self.load_error = one_line(e)
                return False, self.load_error
            msg = f"{target}: not swapped in, still serving {self.scorer.name}: {one_line(e)}"
            self.load_error = msg
            log.error(msg)
            return False, msg
        if self.scorer is not None and self.scorer.cache is not None:
            self.metrics.evicted_before += self.scorer.cache.events["evict"]
        self.scorer, self.source, self.load_error = new, target, None
        log.info("serving %s from %s", new.name, target)
        return True, new.name

    def close(self) -> None:
        for tmp in self._tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def create_app(service: Service, load_on_start: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        if load_on_start and service.scorer is None:
            service.reload()  # on this thread, before the first request (a failure: 503 with the reason)
        try:
            loop.add_signal_handler(signal.SIGHUP, service.reload)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no SIGHUP
            pass
        yield
        service.close()

    app = FastAPI(title="ctrscale", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def authorised(request: Request) -> bool:
        if not service.token:
            return True
        got = request.headers.get("authorization", "")
        return got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), service.token.encode())

    async def read_json(request: Request):
        """The body as JSON, or the error response (401, 415, 413, 422)."""
        if not authorised(request):
            return None, _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return None, _error(415, f"content-type must be application/json, got {ctype or 'none'!r}")
        limit = service.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None, _error(413, f"body: {int(declared):,} bytes exceed the limit of {limit:,}")
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                return None, _error(413, f"body: more than the limit of {limit:,} bytes")
            chunks.append(part)
        try:
            return json.loads(b"".join(chunks)), None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return None, _error(422, f"body: malformed JSON ({str(e) or type(e).__name__})")

    @app.post("/v1/score")
    async def score(request: Request):
        t0 = time.perf_counter()
        body, err = await read_json(request)
        parsed = time.perf_counter()
        scorer = service.scorer  # this request finishes on this model, whatever is swapped in meanwhile
        if err is None and scorer is None:
            err = _error(503, f"not ready: loading {service.source}" + (f" ({service.load_error})"
                                                                       if service.load_error else ""))
        if err is not None:
            service.metrics.observe(err.status_code, time.perf_counter() - t0)
            return err
        try:
            res = scorer.score(body)
        except RequestError as e:
            service.metrics.observe(e.status, time.perf_counter() - t0)
            return _error(e.status, str(e))
        except Exception:  # a bug: logged with its traceback, answered as one
            log.exception("scoring failed")
            service.metrics.observe(500, time.perf_counter() - t0)
            return _error(500, "internal error while scoring (a bug; see the server log)")
        m = service.metrics
        m.candidates += len(res.scores)
        m.cache[res.cache] += 1
        m.unknown.update(res.unknown)
        timing = {"parse": round((parsed - t0) * 1e3, 3), **res.timing_ms}
        out = {"request_id": body.get("request_id"), "scores": res.scores.tolist(), "model": scorer.name,
               "cache": res.cache, "unknown": res.unknown, "timing_ms": timing}
        timing["total"] = round((time.perf_counter() - t0) * 1e3, 3)
        m.observe(200, time.perf_counter() - t0)
        return JSONResponse(out)

    @app.get("/v1/model")
    async def model():
        scorer = service.scorer
        if scorer is None:
            return _error(503, f"not ready: loading {service.source}")
        man = scorer.bundle.manifest
        return {"model": scorer.name, "name": man["model"], "run": man.get("run"), "created": man.get("created"),
                "ctrscale": man.get("ctrscale"), "torch": man.get("torch"), "compiled": bool(man.get("compiled")),
                "cache": None if scorer.cache is None else {"budget_bytes": scorer.cache.budget,
                                                            "bytes": scorer.cache.bytes,
                                                            "extends": _extends(scorer)},
                "limits": vars(service.limits), **scorer.encoder.describe()}

    @app.post("/v1/admin/reload")
    async def reload(request: Request):
        if not authorised(request):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as e:
            return _error(422, f"body: malformed JSON ({e})")
        path = body.get("path") if isinstance(body, dict) else None
        if path is not None and not isinstance(path, str):
            return _error(422, "path: expected a string")
        ok, msg = service.reload(path)
        return {"model": msg} if ok else _error(409, msg)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if service.scorer is None:
            return _error(503, f"loading {service.source}" + (f": {service.load_error}" if service.load_error else ""))
        return {"status": "ready", "model": service.scorer.name}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.text(service.scorer), media_type="text/plain; version=0.0.4")

    return app


def _extends(scorer: Scorer) -> bool:
    from ..models.base import CTRModel
    return type(scorer.model).extend_user is not CTRModel.extend_user
