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
    NotOfferedError,
    ProviderConfigError,
    ProviderError,
    QuotaError,
    Reach,
    ThrottledError,
    TransientError,
    UnrecognizedError,
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

SUB = "/subscriptions/00000000-0000-0000-0000-000000000000"
SKU_EMPTY_ZONES = (  # a size the region does not offer: "zones ''" names no zone
    f"The requested size for resource '{SUB}/resourceGroups/burst-rg/providers/Microsoft."
    "Compute/virtualMachines/vm-0' is currently not available in location 'westeurope' "
    "zones '' for subscription '00000000-0000-0000-0000-000000000000'. Please try another "
    "size or deploy to a different location or zones. See https://aka.ms/azureskunotavailable "
    "for details."
)
ALLOCATION = (
    "Allocation failed. We do not have sufficient capacity for the requested VM size in this "
    "{where}. Read more about improving likelihood of allocation success at "
    "http://aka.ms/allocation-guidance"
)
OVERCONSTRAINED = (
    "Allocation failed. VM(s) with the following constraints cannot be allocated, because the "
    "condition is too restrictive. Please remove some constraints and try again. Constraints "
    "applied are: {zone}- Networking Constraints (such as Accelerated Networking or IPv6) "
    "- VM Size"
)
SIZE_NOT_IN_REGION = (
    "The requested VM size Standard_ND96asr_v4 is not available in the current region. The "
    "sizes available in the current region are: Standard_B1ls,Standard_B1ms,Standard_B1s. "
    "Find out more on the available VM sizes in each region at https://aka.ms/azure-regions."
)

# Every row of the table with the words Azure really sends: (code, fault kwargs for
# FakeArm.inject("create", ...), class, reach). Sources: Azure's error references and the
# threads of Terraform's azurerm provider, AKS, Gardener, mapt and others quoting ARM
# verbatim (a few rows without a public quote use the reference's wording).
ROWS: list[tuple[str, dict[str, Any], type[ProviderError], Reach]] = [
    ("AllocationFailed", {"kind": "lro", "message": ALLOCATION.format(where="region")},
     CapacityError, Reach.ZONE),
    ("ZonalAllocationFailed", {"kind": "lro", "message": ALLOCATION.format(where="zone")},
     CapacityError, Reach.ZONE),
    ("OverconstrainedAllocationRequest",
     {"kind": "lro", "message": OVERCONSTRAINED.format(zone="")}, CapacityError, Reach.ZONE),
    ("OverconstrainedZonalAllocationRequest",
     {"kind": "lro", "message": OVERCONSTRAINED.format(zone="- Availability Zone ")},
     CapacityError, Reach.ZONE),
    ("SkuNotAvailable", {"message": SKU_ZONAL}, CapacityError, Reach.ZONE),
    ("SkuNotAvailable", {"message": SKU_REGIONAL}, RegionCapacityError, Reach.REGION),
    ("SkuNotAvailable", {"message": SKU_EMPTY_ZONES}, RegionCapacityError, Reach.REGION),
    ("VMEvictedDuringLaunch", {"kind": "evict"}, CapacityError, Reach.ZONE),
    ("AvailabilityZoneNotSupported", {"status": 400, "message": "The zone(s) '2' for "
     "resource 'vm-0' is not supported. The supported zones for location 'eastus' are "
     "'3,1'."}, NotOfferedError, Reach.ZONE),
    ("NotAvailableForSubscription", {"message": "The requested VM size Standard_ND96asr_v4 "
     "is not available for the current subscription in location 'eastus'."},
     RegionCapacityError, Reach.REGION),
    ("QuotaExceeded", {"message": "Operation could not be completed as it results in "
     "exceeding approved Total Regional Cores quota. Additional details - Deployment Model: "
     "Resource Manager, Location: eastus, Current Limit: 10, Current Usage: 8, Additional "
     "Required: 96, (Minimum) New Limit Required: 104."}, QuotaError, Reach.REGION),
    ("ResourceQuotaExceeded", {"message": "Creating the resource of type 'Microsoft.Compute/"
     "virtualMachines' would exceed the quota of '25000' resources of type 'Microsoft."
     "Compute/virtualMachines' per resource group."}, QuotaError, Reach.REGION),
    ("OperationNotAllowed", {"message": QUOTA_MSG}, QuotaError, Reach.REGION),
    ("OperationNotAllowed", {"message": PRICE_MSG}, QuotaError, Reach.REGION),
    ("OperationNotAllowed", {"message": "Not allowed here."}, RegionConfigError, Reach.REGION),
    ("TooManyRequests", {"status": 429, "retry_after": 17, "message": "The request is being "
     "throttled as the limit has been reached for operation type - Write_30Min. For more "
     "information, see - https://aka.ms/srpthrottlinglimits"}, ThrottledError, Reach.CALL),
    ("RetryableError", {"status": 500, "message": "A retryable error occurred."},
     TransientError, Reach.CALL),
    ("InternalServerError", {"status": 500, "message": "The server encountered an internal "
     "error. Please retry the request."}, TransientError, Reach.CALL),
    ("InternalServerError", {"kind": "lro", "message": "The server encountered an internal "
     "error. Please retry the request."}, TransientError, Reach.CALL),
    ("InternalExecutionError", {"status": 500, "message": "An internal execution error "
     "occurred. Please retry later."}, TransientError, Reach.CALL),
    ("InternalOperationError", {"kind": "lro", "message": "The server encountered an "
     "internal error, please retry."}, TransientError, Reach.CALL),
    ("ServiceUnavailable", {"status": 503, "message": "The service is currently "
     "unavailable. Please try again later."}, TransientError, Reach.CALL),
    ("SomethingNew", {"status": 502}, TransientError, Reach.CALL),
    ("GatewayTimeout", {"status": 504, "message": "The gateway did not receive a response "
     "from 'Microsoft.Compute' within the specified time period."}, CallTimeoutError,
     Reach.CALL),
    ("OperationPreempted", {"kind": "lro", "message": "Operation execution has been "
     "preempted by a more recent operation."}, TransientError, Reach.CALL),
    ("AuthorizationFailed", {"status": 403, "message": "The client 'ci@example.com' with "
     "object id '11111111-2222-3333-4444-555555555555' does not have authorization to "
     "perform action 'Microsoft.Compute/virtualMachines/write' over scope "
     f"'{SUB}/resourceGroups/burst-rg' or the scope is invalid. If access was recently "
     "granted, please refresh your credentials."}, AuthError, Reach.PROVIDER),
    ("AuthenticationFailed", {"status": 401, "message": "Authentication failed."},
     AuthError, Reach.PROVIDER),
    ("InvalidAuthenticationToken", {"status": 401, "message": "The access token is "
     "invalid."}, AuthError, Reach.PROVIDER),
    ("InvalidAuthenticationTokenTenant", {"status": 401, "message": "The access token is "
     "from the wrong issuer 'https://sts.windows.net/aaaa/'. It must match the tenant "
     "'https://sts.windows.net/bbbb/' associated with this subscription."}, AuthError,
     Reach.PROVIDER),
    ("ExpiredAuthenticationToken", {"status": 401, "message": "The access token expiry UTC "
     "time '12/6/2026 1:00:00 PM' is earlier than current UTC time '12/6/2026 2:00:00 PM'."},
     AuthError, Reach.PROVIDER),
    ("LinkedAuthorizationFailed", {"status": 403, "message": "The client has permission to "
     "perform action 'Microsoft.Compute/virtualMachines/write' on scope 'vm-0'; however, it "
     "does not have permission to perform action 'Microsoft.Network/networkInterfaces/join/"
     "action' on the linked scope(s) 'vm-0-nic' or the linked scope(s) are invalid."},
     AuthError, Reach.PROVIDER),
    ("ReadOnlyDisabledSubscription", {"status": 409, "message": "The subscription "
     "'00000000-0000-0000-0000-000000000000' is disabled and therefore marked as read only. "
     "You cannot perform any write actions on this subscription until it is re-enabled."},
     AuthError, Reach.PROVIDER),
    ("SubscriptionNotFound", {"status": 404, "message": "The subscription "
     "'00000000-0000-0000-0000-000000000000' could not be found."}, AuthError,
     Reach.PROVIDER),
    ("MissingSubscriptionRegistration", {"status": 409, "message": "The subscription is not "
     "registered to use namespace 'Microsoft.Compute'. See https://aka.ms/rps-not-found for "
     "how to register subscriptions."}, AuthError, Reach.PROVIDER),
    ("ResourceGroupNotFound", {"status": 404, "message": "Resource group 'burst-rg' could "
     "not be found."}, AuthError, Reach.PROVIDER),
    ("ResourcePurchaseValidationFailed", {"status": 400, "message": "User failed validation "
     "to purchase resources. Error message: 'You have not accepted the legal terms on this "
     "subscription: '00000000-0000-0000-0000-000000000000' for this plan. Before the "
     "subscription can be used, you need to accept the legal terms of the image.'"},
     ProviderConfigError, Reach.PROVIDER),
    ("MarketplacePurchaseEligibilityFailed", {"status": 400, "message": "Marketplace "
     "purchase eligibilty check returned errors. See inner errors for details. "},
     ProviderConfigError, Reach.PROVIDER),
    ("RequestDisallowedByPolicy", {"status": 403, "target": "vm-0", "message": "Resource "
     "'vm-0' was disallowed by policy. Policy identifiers: '[{\"policyAssignment\":{\"name"
     "\":\"Allowed locations\",\"id\":\"/subscriptions/x/providers/Microsoft.Authorization/"
     "policyAssignments/allowed-locations\"}}]'."}, RegionConfigError, Reach.REGION),
    ("RequestDisallowedByAzure", {"status": 403, "message": "Resource 'vm-0' was disallowed "
     "by Azure: This policy maintains a set of best available regions where your "
     "subscription can deploy resources. The objective of this policy is to ensure that "
     "your subscription has full access to Azure services with optimal performance. Should "
     "you need additional or different regions, contact support."}, RegionConfigError,
     Reach.REGION),
    ("ImageNotFound", {"status": 404, "message": f"The Image '{SUB}/resourceGroups/burst-rg"
     "/providers/Microsoft.Compute/images/burst-node' cannot be found in 'eastus' region."},
     RegionConfigError, Reach.REGION),
    ("PlatformImageNotFound", {"status": 400, "message": "The platform image 'Canonical:"
     "0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest' is not available. Verify that all "
     "fields in the storage profile are correct."}, RegionConfigError, Reach.REGION),
    ("InvalidResourceReference", {"status": 400, "message": f"Resource {SUB}/resourceGroups/"
     "burst-rg/providers/Microsoft.Network/virtualNetworks/burst-westus/subnets/default "
     "referenced by resource vm-0-nic was not found. Please make sure that the referenced "
     "resource exists, and that both resources are in the same region."},
     RegionConfigError, Reach.REGION),
    ("NotFound", {"status": 404, "message": "The entity was not found in this Azure "
     "location."}, RegionConfigError, Reach.REGION),
    ("ResourceNotFound", {"status": 404, "message": "The Resource 'Microsoft.Network/"
     "virtualNetworks/burst-eastus' under resource group 'burst-rg' was not found. For more "
     "details please go to https://aka.ms/ARMResourceNotFoundFix"}, RegionConfigError,
     Reach.REGION),
    ("LocationNotAvailableForResourceType", {"status": 400, "message": "The provided "
     "location 'westus3' is not available for resource type 'Microsoft.Compute/"
     "proximityPlacementGroups'."}, RegionConfigError, Reach.REGION),
    ("NoRegisteredProviderFound", {"status": 400, "message": "No registered resource "
     "provider found for location 'eastus' and API version '2024-11-01' for type "
     "'virtualMachines'."}, RegionConfigError, Reach.REGION),
    ("InvalidParameter", {"status": 400, "target": "vmSize", "message": SIZE_NOT_IN_REGION},
     RegionCapacityError, Reach.REGION),
    ("InvalidParameter", {"status": 400, "message": SIZE_NOT_IN_REGION},
     RegionCapacityError, Reach.REGION),  # no target: the words say the region
    ("InvalidParameter", {"status": 400, "target": "imageReference.sku", "message": "The "
     "value of parameter imageReference.sku is invalid."}, RegionConfigError, Reach.REGION),
    ("InvalidParameter", {"status": 400, "target": "adminUsername", "message": "The Admin "
     "Username specified is not allowed."}, InvalidLaunchError, Reach.REQUEST),
    ("InvalidParameter", {"status": 400, "target": "linuxConfiguration.ssh.publicKeys."
     "keyData", "message": "The value of parameter linuxConfiguration.ssh.publicKeys.keyData "
     "is invalid."}, InvalidLaunchError, Reach.REQUEST),
    ("BadRequest", {"status": 400, "message": "Bad Request"}, RegionConfigError,
     Reach.REGION),
    ("InvalidRequestContent", {"status": 400, "message": "The request content was invalid "
     "and could not be deserialized: 'Could not find member 'foo' on object of type "
     "'ResourceDefinition'. Path 'foo', line 1, position 7.'."}, InvalidLaunchError,
     Reach.REQUEST),
    ("InvalidRequestFormat", {"status": 400, "message": "Cannot parse the request."},
     InvalidLaunchError, Reach.REQUEST),
    ("PropertyChangeNotAllowed", {"status": 409, "message": "Changing property "
     "'osProfile.customData' is not allowed."}, InvalidLaunchError, Reach.REQUEST),
    ("IdempotentParameterMismatch", {"status": 400, "message": "The request parameters do "
     "not match an earlier request with the same name."}, InvalidLaunchError, Reach.REQUEST),
    ("SomethingNew", {"status": 400, "message": "A brand new refusal."}, UnrecognizedError,
     Reach.REGION),
]  # fmt: skip


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
    ids=[f"{r[0]}-{r[1].get('kind', r[1].get('status', 409))}-{r[2].__name__}" for r in ROWS],
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
    words = fault.get("message")
    if words:  # the cloud's words are kept (redacted, squeezed, cut at 400 characters)
        assert " ".join(words.split())[:60] in err.message
    if expected is UnrecognizedError:
        assert err.message.startswith(f"unrecognized azure error {code} (HTTP 400)")
    if code == "TooManyRequests":
        assert err.retry_after == 17
    if err.reach is not Reach.CALL or fault.get("kind") == "lro":
        # rolled back by the adapter itself: nothing of the attempt is left
        assert azure.fake.leftovers()["vms"] == []


def test_every_table_code_has_a_row_with_the_clouds_words() -> None:
    assert {row[0] for row in ROWS} >= set(ERROR_TABLE)


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
