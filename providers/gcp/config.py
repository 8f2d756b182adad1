"""``[gcp]``: Compute Engine. Credentials come from Application Default Credentials only."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, StrictBool, StrictInt, StrictStr

from providers.spec import CloudSection, StrTuple


class GcpConfig(CloudSection):
    cloud: ClassVar[str] = "gcp"

    project: Annotated[StrictStr, Field(min_length=1)]
    zones: StrTuple = ()  # restrict launches to these zones (default: every zone)
    image: Annotated[StrictStr, Field(min_length=1)]  # image or image-family URL (boot disk)
    boot_disk_gb: Annotated[StrictInt, Field(ge=10)] = 200
    network: StrictStr = "global/networks/default"
    subnetworks: dict[StrictStr, StrictStr] = Field(default_factory=dict)  # region -> URL
    service_account: StrictStr | None = None  # e-mail of the VMs' service account
    compact_placement: StrictBool = True  # compact placement policy for multi-node gangs
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)  # on every resource
    endpoint: StrictStr | None = None  # Compute API root override (an emulator), http(s) URL
    billing_endpoint: StrictStr | None = None  # Cloud Billing Catalog API override
