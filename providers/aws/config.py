"""``[aws]``: EC2. Credentials come from boto3's default chain only (environment, profile,
SSO, instance role), never from this file."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, StrictBool, StrictStr

from providers.spec import CloudSection, StrTuple


class AwsConfig(CloudSection):
    cloud: ClassVar[str] = "aws"

    images: dict[StrictStr, StrictStr] = Field(default_factory=dict)  # region -> AMI id
    image_ssm_parameter: StrictStr | None = None  # used where no AMI is given for the region
    subnets: dict[StrictStr, StrictStr] = Field(default_factory=dict)  # AZ id/name -> subnet
    security_group_ids: StrTuple = ()
    key_name: StrictStr | None = None
    placement_group: StrictBool = True
    tags: dict[StrictStr, StrictStr] = Field(default_factory=dict)
