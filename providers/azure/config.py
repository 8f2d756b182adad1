"""``[azure]``: Azure Resource Manager. Credentials come from DefaultAzureCredential only."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, StrictBool, StrictInt, StrictStr

from providers.spec import CloudSection


class AzureConfig(CloudSection):
    cloud: ClassVar[str] = "azure"

    subscription_id: Annotated[StrictStr, Field(min_length=1)]
    resource_group: Annotated[StrictStr, Field(min_length=1)]
    image: StrictStr = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"  # URN/id
    subnets: dict[StrictStr, StrictStr] = Field(default_factory=dict)  # region -> subnet id
    admin_username: StrictStr = "azureuser"
    ssh_public_key: StrictStr | None = None  # the public key text (never a private key)
    os_disk_gb: Annotated[StrictInt, Field(ge=30)] = 200
    proximity_placement_group: StrictBool = True  # for multi-node gangs
    tags: dict[StrictStr, StrictStr] = Field(default_factory=dict)  # on every resource
    endpoint: StrictStr | None = None  # ARM root override (an emulator), https URL
    ca_bundle: StrictStr | None = None  # CA certificate file that verifies ``endpoint``
    prices_endpoint: StrictStr | None = None  # Retail Prices API override
