"""Schemathesis fuzzes every operation of the app's own OpenAPI schema, on every backend.

Each operation gets up to MAX_EXAMPLES requests, both valid and invalid (schemathesis's
positive and negative modes), sent with an admin key. Two accounts are seeded so that
some of those requests hit existing data. No answer may be a 5xx, and every error must
be a problem document.

There is one test per backend. It builds the schema from the app over ``svc`` and runs
Hypothesis itself, one operation per subtest. ``schemathesis.pytest.from_fixture`` would be
the usual lazy schema, but its runner reads ``Function._nodeid``, which pytest 9.2 no
longer has. An exception raised by a route propagates out of ``case.call()``. A handled
5xx (for example a 503 from a storage error) fails the ``not_a_server_error`` check.
Either way the failure shows a curl command that reproduces it.
"""

from __future__ import annotations

import os

import hypothesis
import schemathesis
from hypothesis import given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from balance_ledger.http.problems import MEDIA_TYPE

# Requests per operation: 30 take about 0.4 s per operation and backend on 2 cores (21
# operations: 9 s a backend). More for a deeper local run: BALANCE_TEST_FUZZ_EXAMPLES=500.
MAX_EXAMPLES = int(os.environ.get("BALANCE_TEST_FUZZ_EXAMPLES", "30"))

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    # The same requests on every run of the same code, so CI is deterministic. Editing a
    # route's schema or its module can change them: schemathesis also draws the strings
    # it finds in the app's source.
    derandomize=True,
    database=None,  # nothing is replayed from, or written to, .hypothesis/
    deadline=None,  # a server database's round trips must not make a test flaky
    # "explain" reports the lines that only failing cases ran. Here those lines are in
    # requests and schemathesis, not in the app, so they would only clutter the report.
    phases=[phase for phase in hypothesis.Phase if phase is not hypothesis.Phase.explain],
)


def error_is_a_problem_document(ctx, response, case):
    """Every 4xx and 5xx is ``application/problem+json`` and states its own status."""
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(MEDIA_TYPE), f"an error answered as {content_type!r}"
    assert response.json().get("status") == response.status_code


CHECKS = [not_a_server_error, error_is_a_problem_document]


def test_no_operation_answers_a_server_error(svc, make_client, subtests):
    for user_id, balance in ((1, 10_000), (2, 500)):
        svc.open_account(user_id)
        svc.recharge(user_id, balance, description="fuzz seed")
    client = make_client("admin")
    admin = {"Authorization": client.headers["Authorization"]}
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)

    for result in schema.get_all_operations():
        operation = result.ok()  # raises when the app's schema has a broken operation
        requests = operation.as_strategy(
            GenerationMode.POSITIVE, headers=admin
        ) | operation.as_strategy(GenerationMode.NEGATIVE, headers=admin)

        @FUZZ_SETTINGS
        @given(case=requests)
        def answers_without_server_error(case):
            case.validate_response(case.call(), checks=CHECKS)

        with subtests.test(operation.label):
            answers_without_server_error()
