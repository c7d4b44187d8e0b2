"""Schemathesis fuzzes every operation of the OpenAPI schema: no 5xx, responses match the schema.

Bounded (a few examples per operation) so it stays a quick test; runs in-process on the ASGI app
with the scheduler off (fuzzed submissions are queued, never run), against SQLite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, settings  # noqa: E402

from lifelm.cli.serve import check_argv  # noqa: E402
from lifelm.service import auth  # noqa: E402
from lifelm.service.app import Settings, create_app  # noqa: E402
from lifelm.service.db import Membership, Project, User  # noqa: E402
from service_helpers import write_fasta  # noqa: E402

_tmp = Path(__import__("tempfile").mkdtemp(prefix="lifelm-fuzz-"))
app = create_app(
    Settings(data_dir=_tmp, run_scheduler=False, max_upload_bytes=100_000, argv_check=check_argv)
)
with app.state.sessions() as _s:
    _admin, _member, _p = User(name="root", is_admin=True), User(name="m"), Project(name="lab")
    _s.add_all([_admin, _member, _p])
    _s.flush()
    _s.add(Membership(user_id=_member.id, project_id=_p.id, role="member"))
    TOKENS = {"admin": auth.issue(_s, _admin)[1], "member": auth.issue(_s, _member)[1]}
    _s.commit()
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _dataset() -> None:
    from fastapi.testclient import TestClient

    with TestClient(app) as http:
        f = write_fasta(_tmp / "g.fa")
        http.put("/v1/projects/lab/datasets/g.fa", content=f.read_bytes(),
                 headers={"Authorization": f"Bearer {TOKENS['member']}"})  # fmt: skip


@schema.parametrize()
@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_no_server_errors_and_responses_match_the_schema(case) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    if case.path.endswith("/events"):  # an event stream of a job that never ends here
        pytest.skip("server-sent events are covered by test_service_api")
    # administrators' routes as an administrator, the rest as a plain member of the project
    who = (
        "admin"
        if case.path in ("/v1/users", "/v1/projects") and case.method == "POST"
        else "member"
    )
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKENS[who]}"},
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
    )
