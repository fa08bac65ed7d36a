"""An older client against a newer hub: responses that grew fields still parse, at every depth,
while a request holding a field the hub does not know is refused (422 naming it).

The newer hub is the real one in-process (hubkit.py) with every object of every JSON response
given a field of a later version, guided by the hub's own OpenAPI document, so each response
shape, and each shape nested in one (a job's spec, an assignment's resources), is covered.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import run_job
from hubkit import Hub, make_hub

from lumbung.client import Client, NodeSession
from lumbung.client.auth import SignedAuth
from lumbung.store.memory import MemoryStore
from lumbung.wire.api import HeartbeatRequest, Inventory, NodeRegister
from lumbung.wire.spec import validate_spec

HUB_URL = "http://testserver"
LATER_FIELD = "added_in_a_later_version"


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    hub = make_hub(MemoryStore(), tmp_path)
    hub.clock.now = time.time()  # the clients sign with the real clock
    return hub


def _grown(value: Any, schema: dict[str, Any], schemas: dict[str, Any]) -> Any:
    """``value`` with ``LATER_FIELD`` in every object that ``schema`` describes with properties
    (a model), not in maps (a task's params, its outputs), whose keys are data."""
    if "$ref" in schema:
        return _grown(value, schemas[schema["$ref"].rsplit("/", 1)[-1]], schemas)
    for branch in schema.get("anyOf", []):  # a branch only changes values of its own shape
        value = _grown(value, branch, schemas)
    if isinstance(value, dict) and "properties" in schema:
        fields = schema["properties"]
        grown = {key: _grown(item, fields.get(key, {}), schemas) for key, item in value.items()}
        return grown | {LATER_FIELD: {"any": ["json"]}}
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {
            key: _grown(item, schema["additionalProperties"], schemas)
            for key, item in value.items()
        }
    if isinstance(value, list) and "items" in schema:
        return [_grown(item, schema["items"], schemas) for item in value]
    return value


def _newer_hub(hub: Hub) -> httpx.MockTransport:
    document = hub.http.get("/v1/openapi.json").json()
    schemas = document["components"]["schemas"]

    def response_schema(request: httpx.Request, status: int) -> dict[str, Any]:
        # The route's template: literal segments win over parameters (/v1/jobs/plan, not {job_id}).
        method, path = request.method.lower(), request.url.path
        templates = [t for t in document["paths"] if method in document["paths"][t]]
        matching = [t for t in templates if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", t), path)]
        template = min(matching, key=lambda t: t.count("{"))
        responses = document["paths"][template][method]["responses"]
        content = responses.get(str(status), {}).get("content", {})
        return dict(content.get("application/json", {}).get("schema", {}))

    def forward(request: httpx.Request) -> httpx.Response:
        response = hub.http.request(
            request.method, str(request.url), headers=request.headers, content=request.content
        )
        if not response.content or response.status_code >= 400:
            return response
        if not response.headers["content-type"].startswith("application/json"):
            return response
        schema = response_schema(request, response.status_code)
        return httpx.Response(response.status_code, json=_grown(response.json(), schema, schemas))

    return httpx.MockTransport(forward)


def _registration() -> NodeRegister:
    return NodeRegister(
        name="n1",
        inventory=Inventory(cpus=4, memory_mib=8192, disk_free_mib=50_000),
        price_micro_per_gpu_hour=0,
        price_micro_per_cpu_hour=10_000,
    )


def test_the_grown_responses_really_hold_fields_this_version_does_not_know(hub: Hub) -> None:
    consumer = hub.actor()
    consumer.submit(run_job())
    raw = httpx.Client(
        base_url=HUB_URL, transport=_newer_hub(hub), auth=SignedAuth(consumer.identity)
    )
    job = raw.get("/v1/jobs").json()[0]
    assert LATER_FIELD in job
    view = raw.get(f"/v1/jobs/{job['id']}").json()
    assert LATER_FIELD in view["spec"]["resources"]
    assert LATER_FIELD in view["tasks"][0]
    assert LATER_FIELD not in view["tasks"][0]["params"]  # a map's keys are data


def test_an_older_node_registers_heartbeats_and_claims_from_a_newer_hub(hub: Hub) -> None:
    consumer = hub.actor()
    consumer.submit(run_job(resources={"cpus": 2}))
    node = hub.actor()
    session = NodeSession(HUB_URL, node.identity, transport=_newer_hub(hub))
    assert session.register(_registration()).inventory.cpus == 4
    assert session.heartbeat(HeartbeatRequest(free_slots=1)).cancel == []
    assignment = session.claim(wait_s=0)
    assert assignment is not None
    assert assignment.resources.cpus == 2
    assert LATER_FIELD not in assignment.model_dump()


def test_an_older_consumer_submits_and_watches_on_a_newer_hub(hub: Hub) -> None:
    hub.node("n1")
    consumer = hub.actor()
    client = Client(HUB_URL, consumer.identity, transport=_newer_hub(hub))
    job_spec = validate_spec(run_job())
    assert hub.ctx.log is not None
    hub.ctx.log.mint(consumer.id, 10**9)
    submitted = client.submit(job_spec)
    assert submitted.job.spec == job_spec
    assert submitted.plan.fits[0].name == "n1"
    assert client.get(submitted.job.id).spec == job_spec
    assert [job.id for job in client.list()] == [submitted.job.id]
    assert client.nodes()[0].inventory.cpus == 4
    assert client.results(submitted.job.id).tasks[0].state == "queued"
    assert client.cancel(submitted.job.id).state == "cancelled"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/nodes/register",
            {**_registration().model_dump(mode="json"), LATER_FIELD: 1},
            LATER_FIELD,
        ),
        (
            "/v1/nodes/register",
            _registration().model_dump(mode="json")
            | {"inventory": {"cpus": 1, "memory_mib": 1, "disk_free_mib": 1, LATER_FIELD: 1}},
            f"inventory.{LATER_FIELD}",
        ),
        ("/v1/nodes/heartbeat", {"free_slots": 0, LATER_FIELD: 1}, LATER_FIELD),
        ("/v1/jobs/plan", {"spec": run_job(resources={"gpu": 1})}, "spec.resources.gpu"),
    ],
)
def test_a_request_with_a_field_the_hub_does_not_know_is_refused_naming_it(
    hub: Hub, path: str, body: dict[str, Any], field: str
) -> None:
    actor = hub.actor()
    if path != "/v1/nodes/register":
        actor.call("POST", "/v1/nodes/register", _registration().model_dump(mode="json"))
    refused = actor.call("POST", path, body, expect=422)
    assert refused["field"] == field


def test_a_job_submitted_with_a_field_the_hub_does_not_know_is_refused(hub: Hub) -> None:
    consumer = hub.actor()
    body = {"spec": run_job(), "escrow": consumer.escrow(run_job()), LATER_FIELD: 1}
    assert consumer.call("POST", "/v1/jobs", body, expect=422)["field"] == LATER_FIELD
    assert consumer.call("GET", "/v1/jobs") == []
