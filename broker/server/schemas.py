"""The API's request bodies (pydantic: they are the OpenAPI schema). Responses are the
documents of :mod:`broker.views`, the same as the CLI's ``--json``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker.inputs import RequestInputs

MAX_LAUNCH_FILE = 64 * 1024  # characters: a launch file is a few hundred bytes
API_NAMES = {
    "gpu": "gpu",
    "gpus": "gpus",
    "launch_file": "launch_file",
    "image": "image",
    "max_hours": "max_hours",
    "max_recoveries": "max_recoveries",
}


def _listify(value: object) -> object:
    return [value] if isinstance(value, str) else value


class RequestBody(BaseModel):
    """A quote or cluster request: a launch file (TOML text) and/or the fields; next to a
    launch file the fields override it, as the CLI's flags do."""

    model_config = ConfigDict(extra="forbid", strict=True)

    launch_file: str | None = Field(
        default=None, max_length=MAX_LAUNCH_FILE, description="The TOML text of a .isc file."
    )
    gpus: int | None = Field(default=None, description="GPUs, 1-72 (burst: at most 48).")
    priority: list[str] = Field(default_factory=list, max_length=200)
    strict_priority: bool = False
    gpu: list[str] = Field(default_factory=list, max_length=50, description="GPU models.")
    provider: list[str] = Field(
        default_factory=list, max_length=10, description='aws, gcp, azure; "sim" simulates.'
    )
    region: list[str] = Field(default_factory=list, max_length=200)
    provisioning: Literal["spot", "on-demand"] | None = None
    max_price_per_hour: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    hours: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    max_hours: float | None = Field(
        default=None,
        gt=0,
        le=8760,
        allow_inf_nan=False,
        description="Run-time limit in hours of RUNNING (cycles that recoveries add share it; "
        "a restart gets it whole): at the limit the command is "
        'signalled, artifacts get their final sync and the cluster ends STOPPED ("run-time '
        'limit"). Nodes see it as STRONG_CYCLE_TIME_MS.',
    )
    max_recoveries: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="How many times the experiment is recovered when its gang loses a node "
        "(spot preemption, a node gone): the gang is wound down and provisioned again as the "
        "next cycle, the lost zone blocked, the latest checkpoints restored. Default: 3 on a "
        "spot shape, 0 on on-demand.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="The container image the launch file's command runs in on every node "
        '(`docker run --gpus all --network host --ipc host`); "" runs it on the host. '
        "Default: the service's `[node] image`, else the host.",
    )

    _lists = field_validator("priority", "gpu", "provider", "region", mode="before")(_listify)

    def inputs(self, providers: tuple[str, ...] | None = None) -> RequestInputs:
        return RequestInputs(
            gpus=self.gpus,
            launch_text=self.launch_file,
            priority=tuple(p for item in self.priority for p in item.split(",") if p.strip()),
            strict_priority=self.strict_priority,
            gpu=tuple(self.gpu),
            provider=tuple(self.provider) if providers is None else providers,
            region=tuple(self.region),
            provisioning=self.provisioning,
            max_price_per_hour=self.max_price_per_hour,
            hours=self.hours,
            image=self.image,
            max_hours=self.max_hours,
            max_recoveries=self.max_recoveries,
            names=API_NAMES,
        )


class QuoteBody(RequestBody):
    limit: int | None = Field(default=None, ge=0, description="Plans shown (0 or none: all).")
    explain: bool = False


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(default="token", min_length=1, max_length=200)
    role: Literal["member", "admin"] = "member"


__all__ = ["MAX_LAUNCH_FILE", "QuoteBody", "RequestBody", "TokenBody"]
