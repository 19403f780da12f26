"""POST /v1/runtime/falco through the real FastAPI app: shapes Falco and Falcosidekick send,
batches, and every bad-input case answered with a 4xx that names the problem."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from runtime_app import FALCO_ID, build_app
from runtime_corpus import corpus_files, corpus_raw, docs_raw
from sqlalchemy import text

from runtime.ingest import EventIngestor
from runtime.sources.parse_pool import ParsePool

FALCO = {"x-test-spiffe-id": FALCO_ID, "content-type": "application/json"}
NDJSON = {"x-test-spiffe-id": FALCO_ID, "content-type": "application/x-ndjson"}


@pytest.fixture(scope="module")
def worker_pool() -> Iterator[ParsePool]:
    """Two parse worker processes that take every body (none parsed inline), cut into
    pieces of about 256 bytes: every batch below is split across processes."""
    pool = ParsePool(2, inline_bytes=0, chunk_bytes=256)
    pool.start()
    yield pool
    pool.close()
    assert pool.stats["pooled"] > 0 and pool.stats["fallback"] == 0, pool.stats


@pytest.fixture(params=["fast-path", "route", "worker-processes"])
async def client(
    ingestor: EventIngestor, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """Every case through the server's fast path (SubmitFastPath), through the route, and
    with every body parsed in worker processes (the same answers are expected)."""
    parser = None
    if request.param == "worker-processes":
        parser = request.getfixturevalue("worker_pool")
    app = build_app(
        ingestor,
        max_body_bytes=1 << 20,
        fast_path=request.param != "route",
        parser=parser,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://zerogate") as c:
        yield c


async def test_each_corpus_alert_as_falco_http_output_sends_it(
    client: httpx.AsyncClient, ingestor: EventIngestor
) -> None:
    for path in corpus_files():
        reply = await client.post("/v1/runtime/falco", content=path.read_bytes(), headers=FALCO)
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "stored"
    assert ingestor.store.count() == len(corpus_files())
    again = await client.post(
        "/v1/runtime/falco", content=corpus_files()[0].read_bytes(), headers=FALCO
    )
    assert again.json()["status"] == "duplicate"
    assert ingestor.store.count() == len(corpus_files())


async def test_ndjson_batch_keeps_good_lines_and_reports_bad_ones(
    client: httpx.AsyncClient, ingestor: EventIngestor
) -> None:
    raws = corpus_raw()[:3]
    lines = [json.dumps(raws[0]), "not json", "", json.dumps(raws[1]),
             json.dumps({**raws[2], "priority": "Severe"})]  # fmt: skip
    reply = await client.post("/v1/runtime/falco", content="\n".join(lines), headers=NDJSON)
    assert reply.status_code == 207
    body = reply.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    by_line = {r["index"]: r for r in body["results"]}
    assert by_line[1]["status"] == "stored" and by_line[4]["status"] == "stored"
    assert by_line[2]["status"] == "invalid" and "not JSON" in by_line[2]["error"]["message"]
    assert by_line[5]["error"]["field"] == "priority"
    assert ingestor.store.count() == 2


async def test_a_json_array_item_without_a_stored_form_fails_alone(
    client: httpx.AsyncClient, ingestor: EventIngestor
) -> None:
    """An array item is stored in its canonical form, computed from the decoded value. With a
    uuid its id needs no hashing, so an infinity used to reach the writer and fail the whole
    group commit (503 for every request waiting); now only that item is refused."""
    raws = corpus_raw()[:2]
    poison = json.dumps(raws[1] | {"uuid": "4dd8a8b0-1f4e-4a5c-9d0b-6c1b9c1d2e3f"})
    body = "[" + json.dumps(raws[0]) + "," + poison[:-1] + ', "x": 1e400}]'
    reply = await client.post("/v1/runtime/falco", content=body, headers=FALCO)
    assert reply.status_code == 207, reply.text
    results = reply.json()["results"]
    assert results[0]["status"] == "stored"
    assert results[1]["status"] == "invalid" and "JSON" in results[1]["error"]["message"]
    assert ingestor.store.count() == 1


async def test_json_array_batch(client: httpx.AsyncClient, ingestor: EventIngestor) -> None:
    raws = corpus_raw()
    reply = await client.post(
        "/v1/runtime/falco", json=raws, headers={"x-test-spiffe-id": FALCO_ID}
    )
    assert reply.status_code == 200
    assert reply.json()["accepted"] == len(raws)
    assert ingestor.store.count() == len(raws)


def _docs() -> dict[str, object]:
    return docs_raw()


def _without(key: str) -> bytes:
    return json.dumps({k: v for k, v in _docs().items() if k != key}).encode()


def _with(**patch: object) -> bytes:
    return json.dumps(_docs() | patch).encode()


TEXT = {**FALCO, "content-type": "text/plain"}
OTHER = {**FALCO, "x-test-spiffe-id": "spiffe://zerogate.internal/app"}
BAD_INPUT = {
    "not-json": (b"this is not json", FALCO, 400, "not JSON"),
    "empty": (b"", FALCO, 400, "empty body"),
    "empty-array": (b"[]", FALCO, 400, "empty batch"),
    "wrong-shape": (b'"a string"', FALCO, 400, "must be a JSON object"),
    "missing-rule": (_without("rule"), FALCO, 422, "rule"),
    "missing-priority": (_without("priority"), FALCO, 422, "priority"),
    "missing-time": (_without("time"), FALCO, 422, "time"),
    "unknown-priority": (_with(priority="Severe"), FALCO, 422, "unknown priority"),
    "bad-output-fields": (_with(output_fields=[1]), FALCO, 422, "output_fields"),
    "infinite-number": (_with()[:-1] + b', "x": 1e400}', FALCO, 400, "canonical JSON"),
    "lone-surrogate": (_with()[:-1] + b', "x": "\\udc00"}', FALCO, 400, "surrogate"),
    "nested-too-deep": (b"[" * 5000 + b"]" * 5000, FALCO, 400, "nested too deeply"),
    "text-plain": (b"Critical A shell was spawned", TEXT, 415, "json_output"),
    "no-mtls": (_with(), {"content-type": "application/json"}, 401, "mTLS"),
    "not-allowed": (_with(), OTHER, 403, "may not submit"),
}


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"), list(BAD_INPUT.values()), ids=list(BAD_INPUT)
)
async def test_bad_input_is_a_clear_4xx_and_stores_nothing(
    client: httpx.AsyncClient,
    ingestor: EventIngestor,
    body: bytes,
    headers: dict[str, str],
    status: int,
    needle: str,
) -> None:
    reply = await client.post("/v1/runtime/falco", content=body, headers=headers)
    assert reply.status_code == status, reply.text
    err = reply.json()["error"]
    assert needle in err["message"] or needle == err.get("field"), err
    assert ingestor.store.count() == 0


async def test_body_over_limit_is_413_and_stores_nothing(
    client: httpx.AsyncClient, ingestor: EventIngestor
) -> None:
    big = json.dumps(_docs() | {"output": "x" * (10 * 1024 * 1024)}).encode()  # 10 MB
    reply = await client.post("/v1/runtime/falco", content=big, headers=FALCO)
    assert reply.status_code == 413
    assert "exceeds the limit" in reply.json()["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(20):
            yield b" " * (100 * 1024)

    streamed = await client.post("/v1/runtime/falco", content=chunks(), headers=FALCO)
    assert streamed.status_code == 413
    assert ingestor.store.count() == 0


async def test_corpus_as_one_ndjson_batch(
    client: httpx.AsyncClient, ingestor: EventIngestor
) -> None:
    body = b"".join(p.read_bytes() for p in corpus_files())  # one alert per line, as file_output
    reply = await client.post("/v1/runtime/falco", content=body, headers=NDJSON)
    assert reply.status_code == 200
    assert reply.json()["accepted"] == len(corpus_files())
    assert {r["status"] for r in reply.json()["results"]} == {"stored"}
    assert ingestor.store.count() == len(corpus_files())


async def test_recent_events_endpoint(client: httpx.AsyncClient) -> None:
    await client.post("/v1/runtime/falco", content=corpus_files()[0].read_bytes(), headers=FALCO)
    listed = await client.get("/v1/runtime/events", headers={"x-test-spiffe-id": FALCO_ID})
    assert listed.status_code == 200
    [event] = listed.json()["events"]
    assert event["rule"] == corpus_raw()[0]["rule"]
    anonymous = await client.get("/v1/runtime/events")
    assert anonymous.status_code == 401


async def test_fast_path_answers_submit_before_routing(ingestor: EventIngestor) -> None:
    """SubmitFastPath alone (no runtime routes) answers POST /v1/runtime/falco and passes
    everything else on."""
    from fastapi import FastAPI
    from runtime_app import header_caller

    from runtime.api import SubmitFastPath, SubmitHandler, allow_list

    app = FastAPI()
    handler = SubmitHandler(ingestor=ingestor, caller=header_caller, authorize=allow_list(FALCO_ID))
    app.add_middleware(SubmitFastPath, handler=handler)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://zerogate") as c:
        reply = await c.post("/v1/runtime/falco", content=json.dumps(docs_raw()), headers=FALCO)
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "stored"
        assert (await c.get("/v1/runtime/falco")).status_code == 404  # not ours: routed on
        assert (await c.post("/v1/other", headers=FALCO)).status_code == 404
    assert ingestor.store.count() == 1


async def test_a_store_that_refuses_is_503_for_every_waiting_request(
    client: httpx.AsyncClient, ingestor: EventIngestor
) -> None:
    """Fail closed: while the events table cannot be written, single alerts and batches get a
    503 naming the failure and nothing is acknowledged; once it can, the same alerts are
    stored."""
    raws = corpus_raw()[:4]
    db = ingestor.store.db
    with db.begin() as conn:
        conn.execute(text("ALTER TABLE runtime_event RENAME TO runtime_event_away"))
    try:
        singles = [
            client.post("/v1/runtime/falco", content=json.dumps(r), headers=FALCO) for r in raws[:3]
        ]
        batch = client.post("/v1/runtime/falco", content=json.dumps(raws[3]), headers=NDJSON)
        replies = await asyncio.gather(*singles, batch)
        for reply in replies:
            assert reply.status_code == 503, reply.text
            assert "could not be stored" in reply.json()["error"]["message"]
    finally:
        with db.begin() as conn:
            conn.execute(text("ALTER TABLE runtime_event_away RENAME TO runtime_event"))
    assert ingestor.store.count() == 0
    again = await client.post("/v1/runtime/falco", content=json.dumps(raws[0]), headers=FALCO)
    assert again.status_code == 200 and again.json()["status"] == "stored"
