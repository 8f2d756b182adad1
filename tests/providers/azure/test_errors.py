"""The Azure error table, one test per row: each error is produced by the fake ARM server,
raised by the real ComputeManagementClient, classified by providers.azure.errors.

Most rows go through ``AzureProvider.launch`` (so the rollback is exercised too: the fixture
checks nothing is left); a few check the raw SDK exception the table has to see through
(every 409 is ResourceExistsError, a failed operation reports HTTP 200)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
)
from azure.identity import CredentialUnavailableError

from providers.azure.errors import (
    ERROR_TABLE,
    RegionCapacityError,
    RegionConfigError,
    classify,
    redact,
)
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest, NodeState
from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    ProviderError,
    QuotaError,
    Reach,
    ThrottledError,
    TransientError,
)
from tests.fakes.azure import TOKEN
from tests.providers.azure.conftest import AzureWorld, FakeCredential, make_config

SHAPE = "azure:eastus:Standard_NC24ads_A100_v4:spot"
QUOTA_MSG = (
    "Operation could not be completed as it results in exceeding approved "
    "standardNCADSA100v4Family Cores quota. Additional details - Deployment Model: "
    "Resource Manager, Location: eastus, Current Limit: 0, Current Usage: 0."
)
PRICE_MSG = "Unable to perform operation: the max price 0.1 is lower than the current spot price."
SKU_ZONAL = (
    "The requested size for resource '/subscriptions/x/resourceGroups/burst-rg/providers/"
    "Microsoft.Compute/virtualMachines/vm-0' is currently not available in location 'eastus' "
    "zones '1' for subscription 'x'. Please try another size or deploy to a different "
    "location or zones. See https://aka.ms/azureskunotavailable for details."
)
SKU_REGIONAL = SKU_ZONAL.replace(" zones '1'", "")

# (fault kwargs for FakeArm.inject("create", ...), expected class, expected reach)
ROWS: list[tuple[str, dict[str, Any], type[ProviderError], Reach]] = [
    ("AllocationFailed", {"kind": "lro"}, CapacityError, Reach.ZONE),
    ("ZonalAllocationFailed", {"kind": "lro"}, CapacityError, Reach.ZONE),
    ("OverconstrainedAllocationRequest", {"kind": "lro"}, CapacityError, Reach.ZONE),
    ("OverconstrainedZonalAllocationRequest", {"kind": "lro"}, CapacityError, Reach.ZONE),
    ("SkuNotAvailable", {"message": SKU_ZONAL}, CapacityError, Reach.ZONE),
    ("SkuNotAvailable", {"message": SKU_REGIONAL}, RegionCapacityError, Reach.REGION),
    ("QuotaExceeded", {}, QuotaError, Reach.REGION),
    ("ResourceQuotaExceeded", {}, QuotaError, Reach.REGION),
    ("OperationNotAllowed", {"message": QUOTA_MSG}, QuotaError, Reach.REGION),
    ("OperationNotAllowed", {"message": PRICE_MSG}, QuotaError, Reach.REGION),
    ("OperationNotAllowed", {"message": "Not allowed here."}, RegionConfigError, Reach.REGION),
    ("TooManyRequests", {"status": 429, "retry_after": 17}, ThrottledError, Reach.CALL),
    ("InternalServerError", {"status": 500}, TransientError, Reach.CALL),
    ("ServiceUnavailable", {"status": 503}, TransientError, Reach.CALL),
    ("SomethingNew", {"status": 502}, TransientError, Reach.CALL),
    ("GatewayTimeout", {"status": 504}, CallTimeoutError, Reach.CALL),
    ("InternalServerError", {"kind": "lro"}, TransientError, Reach.CALL),
    ("InvalidAuthenticationToken", {"status": 401}, AuthError, Reach.PROVIDER),
    ("AuthorizationFailed", {"status": 403}, AuthError, Reach.PROVIDER),
    ("ReadOnlyDisabledSubscription", {"status": 409}, AuthError, Reach.PROVIDER),
    ("MissingSubscriptionRegistration", {"status": 409}, AuthError, Reach.PROVIDER),
    ("InvalidParameter", {"status": 400}, InvalidLaunchError, Reach.REQUEST),
    ("ImageNotFound", {"status": 404}, RegionConfigError, Reach.REGION),
    ("PlatformImageNotFound", {"status": 400}, RegionConfigError, Reach.REGION),
    ("InvalidResourceReference", {"status": 400}, RegionConfigError, Reach.REGION),
]


def request(azure: AzureWorld, count: int = 2) -> LaunchRequest:
    shape = azure.catalog.get(SHAPE)
    assert shape is not None
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    return LaunchRequest(
        shape=shape,
        zone="eastus",
        count=count,
        token=f"{cluster}-c1-a1",
        tags={TAG_BROKER: "test", TAG_CLUSTER: cluster, TAG_ATTEMPT: "c1-a1"},
    )


@pytest.mark.parametrize(
    ("code", "fault", "expected", "reach"),
    ROWS,
    ids=[f"{r[0]}-{r[1].get('kind', r[1].get('status', 409))}" for r in ROWS],
)
def test_error_table_row(
    azure: AzureWorld,
    code: str,
    fault: dict[str, Any],
    expected: type[ProviderError],
    reach: Reach,
) -> None:
    provider = azure.provider()
    injected = azure.fake.inject("create", code, **fault)

    with pytest.raises(ProviderError) as caught:
        provider.launch(request(azure), timeout=60)

    err = caught.value
    assert type(err) is expected, err
    assert err.reach is reach
    assert (err.code, err.provider) == (code, "azure")
    assert injected.hits == 1
    if code == "TooManyRequests":
        assert err.retry_after == 17
    if err.reach is not Reach.CALL or fault.get("kind") == "lro":
        # rolled back by the adapter itself: nothing of the attempt is left
        assert azure.fake.leftovers()["vms"] == []


def test_every_table_code_has_a_row() -> None:
    covered = {row[0] for row in ROWS}
    table_only = {
        # aliases of covered rows (same class), kept in the table for completeness
        "VMEvictedDuringLaunch", "RetryableError", "InternalExecutionError",
        "InternalOperationError", "OperationPreempted", "AuthenticationFailed",
        "InvalidAuthenticationTokenTenant", "ExpiredAuthenticationToken",
        "LinkedAuthorizationFailed", "SubscriptionNotFound", "ResourceGroupNotFound",
        "NotFound", "LocationNotAvailableForResourceType", "NoRegisteredProviderFound",
        "InvalidRequestContent", "InvalidRequestFormat", "BadRequest",
        "PropertyChangeNotAllowed", "IdempotentParameterMismatch", "TooManyRequests",
    }  # fmt: skip
    assert set(ERROR_TABLE) - table_only <= covered


def test_a_409_is_resource_exists_error_and_still_classified_by_code(azure: AzureWorld) -> None:
    provider = azure.provider()
    azure.fake.inject("create", "QuotaExceeded")
    model = provider._vm_model(request(azure), "raw-vm-0", None)

    with pytest.raises(ResourceExistsError) as caught:
        provider.compute.virtual_machines.begin_create_or_update("burst-rg", "raw-vm-0", model)

    assert caught.value.status_code == 409
    assert type(classify(caught.value)) is QuotaError


def test_a_failed_operation_reports_200_and_is_classified_by_code(azure: AzureWorld) -> None:
    provider = azure.provider()
    azure.fake.inject("create", "AllocationFailed", kind="lro", wrap="ResourceDeploymentFailure")
    req = request(azure)
    model = provider._vm_model(req, "raw-vm-0", None)
    poller = provider.compute.virtual_machines.begin_create_or_update("burst-rg", "raw-vm-0", model)

    with pytest.raises(HttpResponseError) as caught:
        poller.result()

    assert caught.value.status_code == 200
    assert caught.value.error is not None
    assert caught.value.error.code == "ResourceDeploymentFailure"  # the code is nested
    err = classify(caught.value)
    assert (type(err), err.code) == (CapacityError, "AllocationFailed")
    # the VM is left Failed, holding its NIC and disk, until someone deletes it
    vm = azure.fake.vm("raw-vm-0")
    assert vm is not None and vm.state == "Failed"
    assert azure.fake.leftovers()["nics"] == ["raw-vm-0-nic"]
    (failed,) = provider.describe(req.tags[TAG_CLUSTER])  # tagged: findable, still billing
    assert failed.state is NodeState.TERMINATING
    azure.fake.cascade_failed = False  # even if Azure kept the Failed VM's NIC and disk
    provider.terminate([failed])
    assert azure.fake.leftovers() == {"vms": [], "nics": [], "disks": [], "ppgs": []}


def test_a_nested_code_in_details_decides(azure: AzureWorld) -> None:
    provider = azure.provider()
    azure.fake.inject("create", "QuotaExceeded", wrap="InvalidTemplateDeployment", status=400)

    with pytest.raises(QuotaError) as caught:
        provider.launch(request(azure), timeout=60)

    assert caught.value.code == "QuotaExceeded"


def test_401_from_arm_is_client_authentication_error_and_auth(azure: AzureWorld) -> None:
    provider = azure.provider(credential=FakeCredential("not-the-token"))
    with pytest.raises(ClientAuthenticationError) as raw:
        list(provider.compute.virtual_machines.list("burst-rg"))
    assert type(classify(raw.value)) is AuthError

    with pytest.raises(AuthError) as caught:
        provider.launch(request(azure), timeout=60)
    assert caught.value.code == "InvalidAuthenticationToken"
    ok, detail = provider.health()
    assert not ok and detail.startswith("Unauthorized: InvalidAuthenticationToken")
    assert "not-the-token" not in detail


def test_credential_unavailable_is_auth(azure: AzureWorld) -> None:
    class NoCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise CredentialUnavailableError(message="DefaultAzureCredential failed")

    provider = azure.provider(credential=NoCredential())
    with pytest.raises(AuthError) as caught:
        provider.describe("bb-any")
    assert caught.value.code == "CredentialUnavailable"
    assert caught.value.reach is Reach.PROVIDER


def test_connection_refused_is_transient(azure: AzureWorld) -> None:
    provider = azure.provider(config=make_config(azure.fake, endpoint="https://127.0.0.1:9"))
    with pytest.raises(TransientError) as caught:
        provider.list_tagged()
    assert caught.value.code == "ServiceRequestError"
    assert isinstance(caught.value.__cause__, ServiceRequestError)


def test_list_errors_are_classified_too(azure: AzureWorld) -> None:
    provider = azure.provider()
    azure.fake.inject("list", "TooManyRequests", status=429, retry_after=3)
    with pytest.raises(ThrottledError) as caught:
        provider.describe("bb-any")
    assert caught.value.retry_after == 3


def test_messages_are_redacted() -> None:
    jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOi.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQ.c2lnbmF0dXJl"
    text = redact(f"Authorization: Bearer {TOKEN} failed; token {jwt}; client_secret=s3cr3t")
    assert TOKEN not in text and jwt not in text and "s3cr3t" not in text
    err = classify(HttpResponseError(message=f"bad header Bearer {TOKEN}"))
    assert TOKEN not in str(err)


def test_unknown_exceptions_are_invalid_requests() -> None:
    err = classify(RuntimeError("boom"))
    assert type(err) is InvalidLaunchError and err.code == "RuntimeError"
    assert classify(err) is err
