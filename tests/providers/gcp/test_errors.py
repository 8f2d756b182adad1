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
    NotOfferedError,
    ProviderError,
    QuotaError,
    Reach,
    RegionCapacityError,
    RegionConfigError,
    ThrottledError,
    TransientError,
    UnrecognizedError,
)
from providers.gcp.errors import (
    ERROR_TABLE,
    STATUS_TABLE,
    classify,
    redact,
)
from tests.fakes.gcp import write_client_files
from tests.providers.gcp.conftest import GcpWorld, gcp_config

P = "projects/burst-test"
# Every row of the table with the words Google really sends: (code or reason, HTTP status
# or None, message, class, reach). camelCase reasons come in synchronous HTTP errors,
# UPPER_CASE codes in failed operations. Sources: issue threads and code of SkyPilot,
# Slurm-GCP / HPC Toolkit, Terraform's Google provider, terratest, the GKE cluster
# autoscaler, fast.ai course set-ups and Google's own troubleshooting pages, which quote
# the cloud verbatim; rows without a public quote use the wording of Google's reference.
REAL: list[tuple[str, int | None, str, type[ProviderError], Reach]] = [
    ("ZONE_RESOURCE_POOL_EXHAUSTED", 503,
     f"The zone '{P}/zones/us-central1-a' does not have enough resources available to "
     "fulfill the request.  Try a different zone, or try again later.", CapacityError,
     Reach.ZONE),
    ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", 503,
     f"The zone '{P}/zones/us-central1-a' does not have enough resources available to "
     "fulfill the request.  '(resource type:compute)'.", CapacityError, Reach.ZONE),
    ("insufficientCapacity", 503, "There are not enough resources available to fulfill the "
     "request.", CapacityError, Reach.ZONE),
    ("UNSUPPORTED_OPERATION", 400, "The instance was preempted while it was being created.",
     CapacityError, Reach.ZONE),
    ("GPU_STOCKOUT", 503, "There are no GPUs of this type available in the zone.",
     CapacityError, Reach.ZONE),
    ("VM_MIN_COUNT_NOT_REACHED", 503, "Requested minimum count of 6 VMs could not be created.",
     CapacityError, Reach.ZONE),
    ("REGION_RESOURCE_POOL_EXHAUSTED", 503,
     f"The region '{P}/regions/us-central1' does not have enough resources available to "
     "fulfill the request.", RegionCapacityError, Reach.REGION),
    ("RESOURCE_POOL_EXHAUSTED", 503,
     "The global or regional externalIP resource pool is exhausted.", RegionCapacityError,
     Reach.REGION),
    ("QUOTA_EXCEEDED", 403, "Quota 'NVIDIA_A100_GPUS' exceeded.  Limit: 16.0 in region "
     "us-central1.", QuotaError, Reach.REGION),
    ("quotaExceeded", 403, "Quota 'PREEMPTIBLE_NVIDIA_H100_GPUS' exceeded.  Limit: 0.0 in "
     "region us-central1.", QuotaError, Reach.REGION),
    ("rateLimitExceeded", 403, "Rate Limit Exceeded", ThrottledError, Reach.CALL),
    ("userRateLimitExceeded", 403, "User Rate Limit Exceeded", ThrottledError, Reach.CALL),
    ("RATE_LIMIT_EXCEEDED", 403, "Rate limit exceeded for the compute.googleapis.com API.",
     ThrottledError, Reach.CALL),
    ("RESOURCE_OPERATION_RATE_EXCEEDED", 403,
     f"Operation rate exceeded for resource '{P}/global/images/burst-node'. Too frequent "
     "operations from the source resource.", ThrottledError, Reach.CALL),
    ("backendError", 500, "Backend Error", TransientError, Reach.CALL),
    ("internalError", 500, "Internal error. Please try again or contact Google Support. "
     "(Code: '-8467912373498734')", TransientError, Reach.CALL),
    ("INTERNAL_ERROR", 500, "Internal error. Please try again or contact Google Support. "
     "(Code: '5E83A62B39EE8.A1B2C3D.F9E8D7C6')", TransientError, Reach.CALL),
    ("resourceNotReady", 400, f"The resource '{P}/zones/us-central1-a/instances/bb-x-0' is "
     "not ready", TransientError, Reach.CALL),
    ("RESOURCE_NOT_READY", 400, f"The resource '{P}/zones/us-central1-a/instances/bb-x-0' "
     "is not ready", TransientError, Reach.CALL),
    ("forbidden", 403, f"Required 'compute.instances.create' permission for '{P}/zones/"
     "us-central1-a/instances/bb-x-0'", AuthError, Reach.PROVIDER),
    ("insufficientPermissions", 403, "Request had insufficient authentication scopes.",
     AuthError, Reach.PROVIDER),
    ("authError", 401, "Invalid Credentials", AuthError, Reach.PROVIDER),
    ("unauthorized", 401, "Request had invalid authentication credentials. Expected OAuth 2 "
     "access token, login cookie or other valid authentication credential.", AuthError,
     Reach.PROVIDER),
    ("IAM_PERMISSION_DENIED", 403, "Permission 'iam.serviceAccounts.actAs' denied on "
     "service account burst@burst-test.iam.gserviceaccount.com", AuthError, Reach.PROVIDER),
    ("PERMISSION_DENIED", 403, "Permission denied on resource project burst-test.",
     AuthError, Reach.PROVIDER),
    ("accessNotConfigured", 403, "Compute Engine API has not been used in project 123456 "
     "before or it is disabled. Enable it by visiting https://console.developers.google.com"
     "/apis/api/compute.googleapis.com/overview?project=123456 then retry.",
     NotConfiguredError, Reach.PROVIDER),
    ("SERVICE_DISABLED", 403, "Compute Engine API has not been used in project 123456 "
     "before or it is disabled.", NotConfiguredError, Reach.PROVIDER),
    ("notFound", 404, f"The resource '{P}/global/images/family/burst-node' was not found",
     RegionConfigError, Reach.REGION),
    ("RESOURCE_NOT_FOUND", 404, f"The resource '{P}/regions/us-central1/subnetworks/burst' "
     "was not found", RegionConfigError, Reach.REGION),
    ("invalid", 400, "Invalid value for field 'zone': 'us-east1'. Unknown zone.",
     RegionConfigError, Reach.REGION),
    ("badRequest", 400, "[nvidia-tesla-a100, n1-highmem-8] features are not compatible for "
     "creating instance.", RegionConfigError, Reach.REGION),
    ("invalidParameter", 400, "Invalid value for field 'resource.networkInterfaces[0]."
     "subnetwork': 'burst'. The referenced subnetwork resource cannot be found.",
     RegionConfigError, Reach.REGION),
    ("INVALID_FIELD_VALUE", 400, "Invalid value for field 'resource.disks[0]."
     "initializeParams.sourceImage': 'projects/deeplearning-platform-release/global/images/"
     "family/missing'. The referenced image resource cannot be found.", RegionConfigError,
     Reach.REGION),
    ("INVALID_USAGE", 400, "Invalid resource usage: 'Requested boot disk architecture "
     "(X86_64) is not compatible with machine type architecture (ARM64).'",
     RegionConfigError, Reach.REGION),
    ("IP_SPACE_EXHAUSTED", 400, "Instance 'bb-x-0' creation failed: IP space of "
     f"'{P}/regions/us-central1/subnetworks/subnet-name' is exhausted.", RegionConfigError,
     Reach.REGION),
    ("IP_SPACE_EXHAUSTED_WITH_DETAILS", None, "Instance 'bb-x-0' creation failed: IP space "
     f"of '{P}/regions/asia-south1/subnetworks/subnet-1' is exhausted. Insufficient free IP "
     "addresses in the IP range '10.0.2.0/24'. Consider expanding the current IP range or "
     "selecting an alternative IP range. If this is a secondary range, consider adding an "
     "additional secondary range", RegionConfigError, Reach.REGION),
    ("conditionNotMet", 412, "Constraint constraints/gcp.resourceLocations violated for "
     "projects/burst-test. us-central1-a violates constraint "
     "constraints/gcp.resourceLocations.", RegionConfigError, Reach.REGION),
    ("CONDITION_NOT_MET", 412, "Instance 'bb-x-0' creation failed: Constraint "
     "constraints/compute.vmExternalIpAccess violated for project 1234567890.",
     RegionConfigError, Reach.REGION),
    ("required", 400, "Required field 'resource.disks[0]' not specified",
     InvalidLaunchError, Reach.REQUEST),
    ("alreadyExists", 409, f"The resource '{P}/zones/us-central1-a/instances/bb-x-0' "
     "already exists", InvalidLaunchError, Reach.REQUEST),
    ("RESOURCE_ALREADY_EXISTS", 409, f"The resource '{P}/zones/us-central1-a/instances/"
     "bb-x-0' already exists", InvalidLaunchError, Reach.REQUEST),
]  # fmt: skip
# The scopes Google writes only in the message: the same codes, another reach.
BY_MESSAGE: list[tuple[str, int | None, str, type[ProviderError], Reach]] = [
    ("invalid", 400, "Invalid value for field 'resource.machineType': 'zones/us-central1-c/"
     "machineTypes/f1-micro'. Machine type with name 'f1-micro' does not exist in zone "
     "'us-central1-c'.", NotOfferedError, Reach.ZONE),  # terratest #1132
    ("INVALID_FIELD_VALUE", 400, "Invalid value for field 'resource.machineType': "
     "'a2-highgpu-8g'. Machine type with name 'a2-highgpu-8g' does not exist in zone "
     "'us-central1-c'.", NotOfferedError, Reach.ZONE),
    ("badRequest", 400, f"The resource '{P}/zones/us-central1-f/acceleratorTypes/"
     "nvidia-tesla-k80' was not found", NotOfferedError, Reach.ZONE),  # TF google #5860
    ("notFound", 404, f"The resource '{P}/zones/us-west1-b/acceleratorTypes/nvidia-tesla-p4' "
     "was not found", NotOfferedError, Reach.ZONE),  # fast.ai course-v3 #430
    ("QUOTA_EXCEEDED", 403, "Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally.",
     GlobalQuotaError, Reach.PROVIDER),
    ("quotaExceeded", 403, "Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally.",
     GlobalQuotaError, Reach.PROVIDER),
    ("QUOTA_EXCEEDED", 403, "Quota 'CPUS_ALL_REGIONS' exceeded.  Limit: 32.0 globally.",
     GlobalQuotaError, Reach.PROVIDER),
]  # fmt: skip
SHAPE = "gcp:us-central1:g2-standard-48:on-demand"  # one node: no placement policy call


def launch_error(gcp: GcpWorld) -> ProviderError:
    provider = gcp.provider()
    with pytest.raises(ProviderError) as caught:
        provider.launch(gcp.request(SHAPE, count=1), timeout=60)
    assert caught.value.provider == "gcp"
    return caught.value


def inject_real(gcp: GcpWorld, code: str, status: int | None, message: str) -> None:
    """The error as Google sends it: a synchronous HTTP error for a camelCase reason, a
    failed operation for an UPPER_CASE code (google-auth resends a 401 twice)."""
    kind = "op" if code.isupper() else "sync"
    times = 3 if status == 401 else 1
    gcp.fake.inject("bulkInsert", kind, status=status, code=code, message=message, times=times)


def test_every_table_row_has_a_test_with_the_clouds_words() -> None:
    assert {row[0] for row in REAL} == set(ERROR_TABLE)


@pytest.mark.parametrize(
    ("code", "status", "message", "cls", "reach"),
    REAL + BY_MESSAGE,
    ids=[f"{r[0]}-{r[3].__name__}" for r in REAL + BY_MESSAGE],
)
def test_error_table_row(
    gcp: GcpWorld,
    code: str,
    status: int | None,
    message: str,
    cls: type[ProviderError],
    reach: Reach,
) -> None:
    inject_real(gcp, code, status, message)

    err = launch_error(gcp)

    assert (type(err), err.reach, err.code) == (cls, reach, code)
    assert " ".join(message.split())[:60] in " ".join(err.message.split())
    assert gcp.fake.instances == {}


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, UnrecognizedError),
        (401, AuthError),
        (403, AuthError),
        (404, RegionConfigError),
        (409, UnrecognizedError),
        (412, RegionConfigError),
        (418, UnrecognizedError),
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
    if cls is UnrecognizedError:  # never a failed request; said loudly
        assert err.reach is Reach.REGION
        assert err.message.startswith(f"unrecognized gcp error {status} (HTTP {status})")


SUMMARY = "Requested minimum count of 1 VMs could not be created"  # SkyPilot's docs


@pytest.mark.parametrize(
    ("also", "cls", "code"),
    [
        (  # the pair SkyPilot users see: the cause decides (a stockout: next zone)
            [("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
              "The zone 'projects/burst-test/zones/us-central1-a' does not have enough "
              "resources available to fulfill the request.  '(resource type:compute)'.")],
            CapacityError, "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        ),
        (  # a quota next to it: the quota, and its message says it is project-wide
            [("QUOTA_EXCEEDED", "Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally.")],
            GlobalQuotaError, "QUOTA_EXCEEDED",
        ),
        (  # one VM out of stock, another over a regional quota: the wider reach decides
            [("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone ... does not have enough resources"),
             ("QUOTA_EXCEEDED", "Quota 'NVIDIA_H100_GPUS' exceeded.  Limit: 8.0 in region "
              "us-central1.")],
            QuotaError, "QUOTA_EXCEEDED",
        ),
    ],
)  # fmt: skip
def test_vm_min_count_not_reached_is_a_summary_its_cause_decides(
    gcp: GcpWorld, also: list[tuple[str, str]], cls: type, code: str
) -> None:
    gcp.fake.inject(
        "bulkInsert", "op", status=503, code="VM_MIN_COUNT_NOT_REACHED", message=SUMMARY,
        also=also,
    )  # fmt: skip
    err = launch_error(gcp)
    assert (type(err), err.code) == (cls, code)


def test_a_structured_quota_metric_wins_over_the_message(gcp: GcpWorld) -> None:
    gcp.fake.inject(
        "bulkInsert", "op", status=403, code="QUOTA_EXCEEDED", metric="NVIDIA_H100_GPUS",
        message="Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally.",
    )  # fmt: skip
    err = launch_error(gcp)
    assert type(err) is QuotaError and err.message.startswith("quota NVIDIA_H100_GPUS: ")


def test_the_message_scopes_only_the_codes_that_need_it(gcp: GcpWorld) -> None:
    """A zone named in the words of a code that says its own scope changes nothing."""
    words = "Machine type with name 'a2-highgpu-8g' does not exist in zone 'us-central1-c'."
    gcp.fake.inject("bulkInsert", "sync", status=403, code="forbidden", message=words)
    assert type(launch_error(gcp)) is AuthError
    gcp.fake.inject("bulkInsert", "sync", status=409, code="alreadyExists", message=words)
    assert type(launch_error(gcp)) is InvalidLaunchError


def test_a_zone_without_the_machine_type_is_that_zone_only(gcp: GcpWorld) -> None:
    """The fake refuses a machine type its zone lacks with Google's words: the adapter
    says the zone does not offer it (next zone), never that the request is invalid."""
    gcp.fake.machine_types["us-central1-a"].pop("g2-standard-48")
    err = launch_error(gcp)
    assert (type(err), err.reach, err.code) == (NotOfferedError, Reach.ZONE, "invalid")
    assert "does not exist in zone 'us-central1-a'" in err.message


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
        ("400", RegionConfigError),  # reason "invalid": a value this region refuses
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
