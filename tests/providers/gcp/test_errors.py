"""The GCP error table, a test per row: each error is raised by the real compute_v1 client
(synchronous HTTP errors, or failed operations read by the adapter) against the fake server,
then classified. Only transport-level rows use hand-built exceptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as core_exc

from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    GlobalQuotaError,
    InvalidLaunchError,
    NotConfiguredError,
    ProviderError,
    QuotaError,
    Reach,
    RegionCapacityError,
    RegionConfigError,
    ThrottledError,
    TransientError,
)
from providers.gcp.errors import (
    ERROR_TABLE,
    STATUS_TABLE,
    classify,
    redact,
)
from tests.fakes.gcp import write_client_files
from tests.providers.gcp.conftest import GcpWorld, gcp_config

# code/reason -> (HTTP status the fake answers with, expected class, expected reach). Written
# out by hand (not read from ERROR_TABLE), so a change of the table shows up here.
EXPECTED: dict[str, tuple[int, type[ProviderError], Reach]] = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": (503, CapacityError, Reach.ZONE),
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": (503, CapacityError, Reach.ZONE),
    "insufficientCapacity": (503, CapacityError, Reach.ZONE),
    "UNSUPPORTED_OPERATION": (400, CapacityError, Reach.ZONE),
    "GPU_STOCKOUT": (503, CapacityError, Reach.ZONE),
    "REGION_RESOURCE_POOL_EXHAUSTED": (503, RegionCapacityError, Reach.REGION),
    "QUOTA_EXCEEDED": (403, QuotaError, Reach.REGION),
    "quotaExceeded": (403, QuotaError, Reach.REGION),
    "rateLimitExceeded": (403, ThrottledError, Reach.CALL),
    "userRateLimitExceeded": (403, ThrottledError, Reach.CALL),
    "RATE_LIMIT_EXCEEDED": (403, ThrottledError, Reach.CALL),
    "RESOURCE_OPERATION_RATE_EXCEEDED": (403, ThrottledError, Reach.CALL),
    "backendError": (500, TransientError, Reach.CALL),
    "internalError": (500, TransientError, Reach.CALL),
    "INTERNAL_ERROR": (500, TransientError, Reach.CALL),
    "resourceNotReady": (400, TransientError, Reach.CALL),
    "RESOURCE_NOT_READY": (400, TransientError, Reach.CALL),
    "forbidden": (403, AuthError, Reach.PROVIDER),
    "insufficientPermissions": (403, AuthError, Reach.PROVIDER),
    "authError": (401, AuthError, Reach.PROVIDER),
    "unauthorized": (401, AuthError, Reach.PROVIDER),
    "IAM_PERMISSION_DENIED": (403, AuthError, Reach.PROVIDER),
    "PERMISSION_DENIED": (403, AuthError, Reach.PROVIDER),
    "accessNotConfigured": (403, NotConfiguredError, Reach.PROVIDER),
    "SERVICE_DISABLED": (403, NotConfiguredError, Reach.PROVIDER),
    "invalid": (400, InvalidLaunchError, Reach.REQUEST),
    "badRequest": (400, InvalidLaunchError, Reach.REQUEST),
    "required": (400, InvalidLaunchError, Reach.REQUEST),
    "invalidParameter": (400, InvalidLaunchError, Reach.REQUEST),
    "INVALID_FIELD_VALUE": (400, InvalidLaunchError, Reach.REQUEST),
    "INVALID_USAGE": (400, InvalidLaunchError, Reach.REQUEST),
    "notFound": (404, RegionConfigError, Reach.REGION),
    "RESOURCE_NOT_FOUND": (404, RegionConfigError, Reach.REGION),
    "alreadyExists": (409, InvalidLaunchError, Reach.REQUEST),
    "RESOURCE_ALREADY_EXISTS": (409, InvalidLaunchError, Reach.REQUEST),
}
SHAPE = "gcp:us-central1:g2-standard-48:on-demand"  # one node: no placement policy call


def launch_error(gcp: GcpWorld) -> ProviderError:
    provider = gcp.provider()
    with pytest.raises(ProviderError) as caught:
        provider.launch(gcp.request(SHAPE, count=1), timeout=60)
    assert caught.value.provider == "gcp"
    return caught.value


def test_every_table_row_has_a_test() -> None:
    assert set(EXPECTED) == set(ERROR_TABLE)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_error_table_row(gcp: GcpWorld, code: str) -> None:
    status, cls, reach = EXPECTED[code]
    # camelCase reasons come in synchronous HTTP errors, UPPER_CASE codes in operations
    kind = "op" if code.isupper() else "sync"
    # google-auth answers a 401 by refreshing the token and resending, twice at most
    gcp.fake.inject("bulkInsert", kind, status=status, code=code, times=3 if status == 401 else 1)

    err = launch_error(gcp)

    assert type(err) is cls
    assert err.reach is reach
    assert err.code == code
    assert gcp.fake.instances == {}


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidLaunchError),
        (401, AuthError),
        (403, AuthError),
        (404, RegionConfigError),
        (409, InvalidLaunchError),
        (429, ThrottledError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, CallTimeoutError),
    ],
)
def test_status_without_a_known_reason(gcp: GcpWorld, status: int, cls: type) -> None:
    assert status not in STATUS_TABLE or STATUS_TABLE[status] is cls
    gcp.fake.inject("bulkInsert", "sync", status=status, code=None, times=3)
    err = launch_error(gcp)
    assert type(err) is cls
    assert err.code == str(status)


# -- the named scenarios of issue 5 ----------------------------------------------------------


@pytest.mark.parametrize("fault", ["stockout", "stockout-details", "stockout-no-status", "op-503"])
def test_stockouts_from_operations_are_capacity_not_transient(gcp: GcpWorld, fault: str) -> None:
    gcp.fake.inject("bulkInsert", fault, zone="us-central1-a")
    err = launch_error(gcp)
    assert type(err) is CapacityError and err.reach is Reach.ZONE
    # the operation was polled to DONE and its error list read by the adapter
    assert gcp.fake.count("operationGet") >= 1


def test_a_synchronous_503_is_transient(gcp: GcpWorld) -> None:
    gcp.fake.inject("bulkInsert", "503")
    err = launch_error(gcp)
    assert type(err) is TransientError and err.reach is Reach.CALL


@pytest.mark.parametrize(
    ("fault", "cls", "metric"),
    [
        ("quota", QuotaError, "NVIDIA_H100_GPUS"),
        ("global-quota", GlobalQuotaError, "GPUS_ALL_REGIONS"),
        ("op-quota", QuotaError, "PREEMPTIBLE_NVIDIA_H100_GPUS"),
        ("op-global-quota", GlobalQuotaError, "GPUS_ALL_REGIONS"),
    ],
)
def test_quota_scope_comes_from_the_metric_name(
    gcp: GcpWorld, fault: str, cls: type, metric: str
) -> None:
    gcp.fake.inject("bulkInsert", fault)
    err = launch_error(gcp)
    assert type(err) is cls
    assert metric in err.message
    assert err.reach is (Reach.PROVIDER if cls is GlobalQuotaError else Reach.REGION)


def test_a_regional_metric_with_all_regions_in_its_name_is_global(gcp: GcpWorld) -> None:
    gcp.fake.inject(
        "bulkInsert", "op", status=403, code="QUOTA_EXCEEDED", metric="CPUS_ALL_REGIONS"
    )
    assert type(launch_error(gcp)) is GlobalQuotaError


def test_throttling_429_carries_retry_after(gcp: GcpWorld) -> None:
    gcp.fake.inject("bulkInsert", "429")
    err = launch_error(gcp)
    assert type(err) is ThrottledError and err.retry_after == 7.0


@pytest.mark.parametrize(
    ("fault", "cls"),
    [
        ("rate-limit", ThrottledError),
        ("500", TransientError),
        ("op-internal", TransientError),
        ("401", AuthError),
        ("403", AuthError),
        ("400", InvalidLaunchError),
        ("404", RegionConfigError),
    ],
)
def test_named_faults(gcp: GcpWorld, fault: str, cls: type) -> None:
    gcp.fake.inject("bulkInsert", fault, times=3 if fault == "401" else 1)
    assert type(launch_error(gcp)) is cls


def test_errors_of_read_calls_are_classified_too(gcp: GcpWorld) -> None:
    provider = gcp.provider()
    gcp.fake.inject("aggregatedList", "rate-limit")
    with pytest.raises(ThrottledError):
        provider.list_tagged()
    gcp.fake.inject("aggregatedList", "403")
    with pytest.raises(AuthError):
        provider.describe("bb-123")


def test_connection_refused_is_transient(gcp: GcpWorld) -> None:
    provider = gcp.provider(config=gcp_config("http://127.0.0.1:9"))
    with pytest.raises(TransientError) as caught:
        provider.list_tagged()
    assert caught.value.reach is Reach.CALL


def test_timeouts_are_call_timeouts() -> None:
    assert type(classify(requests.exceptions.ReadTimeout("read timed out"))) is CallTimeoutError
    assert type(classify(requests.exceptions.ConnectTimeout("connect"))) is CallTimeoutError
    assert type(classify(core_exc.RetryError("deadline", None))) is CallTimeoutError  # type: ignore[no-untyped-call]


def test_no_application_default_credentials_is_not_configured(gcp: GcpWorld) -> None:
    provider = gcp.provider(credentials=None)
    provider._credentials = None  # the hermetic environment has no ADC at all
    ok, detail = provider.health()
    assert not ok and detail.startswith("NotConfigured: DefaultCredentialsError")
    with pytest.raises(NotConfiguredError) as caught:
        provider.launch(gcp.request(SHAPE, count=1), timeout=60)
    assert caught.value.reach is Reach.PROVIDER


def test_a_refused_token_refresh_is_an_auth_error(
    gcp: GcpWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_client_files(gcp.server.url, tmp_path)
    info = json.loads(files["adc"].read_text())
    files["adc"].write_text(json.dumps({**info, "token_url": f"{gcp.server.url}/no-token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(files["adc"]))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "burst-test")
    provider = gcp.provider(credentials=None)
    provider._credentials = None
    ok, detail = provider.health()
    assert not ok and detail.startswith("Unauthorized: ")
    assert files["subject"].read_text() not in detail


def test_decisions_never_come_from_message_text() -> None:
    misleading = core_exc.Forbidden(  # type: ignore[no-untyped-call]
        "ZONE_RESOURCE_POOL_EXHAUSTED quota GPUS_ALL_REGIONS exceeded, retry later",
        errors=[{"reason": "forbidden", "message": "rateLimitExceeded"}],
    )
    assert type(classify(misleading)) is AuthError


def test_credentials_are_redacted_from_messages() -> None:
    text = (
        "token ya29.a0AfH6SMBx-secret.part refresh 1//0gSecretRefresh_Token-xyz "
        'Authorization: Bearer abc.def {"client_secret": "hush"} url?key=AIzaSyKEY&x=1'
    )
    clean = redact(text)
    for secret in ("a0AfH6SMBx", "0gSecretRefresh", "abc.def", "hush", "AIzaSyKEY"):
        assert secret not in clean
    err = classify(core_exc.BadRequest(text, errors=[{"reason": "invalid"}]))  # type: ignore[no-untyped-call]
    assert "ya29.a0" not in err.message and "hush" not in str(err)


@pytest.mark.parametrize(("method", "fault"), [("aggregatedList", "503"), ("list", "500")])
def test_the_clients_never_retry_by_themselves(gcp: GcpWorld, method: str, fault: str) -> None:
    """Every call passes retry=None: one HTTP request per call, tenacity owns retries
    (compute_v1's default retry would have sent the read again and succeeded)."""
    provider = gcp.provider()
    gcp.fake.inject(method, fault)
    with pytest.raises(TransientError):
        if method == "aggregatedList":
            provider.list_tagged()
        else:
            provider.launch(gcp.request(SHAPE, count=1), timeout=60)
    assert gcp.fake.count(method) == 1
    provider.terminate(provider.list_tagged())
