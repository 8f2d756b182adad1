"""What one cloud declares to the broker: its :class:`CloudSpec` and its config section model.

Each cloud lives in one folder, ``providers/<cloud>/``, whose ``spec.py`` builds its
``CloudSpec`` and whose ``config.py`` holds its ``[<cloud>]`` section model (a
:class:`CloudSection`). :mod:`providers.clouds` lists the specs in one table; everything
else (the configuration file, the registry, quota scopes, the CLI's cloud list) reads that
table. A spec imports no cloud SDK: its functions import the adapter and catalog modules
when they are called.

Section models are strict: a value of the wrong type is refused, never coerced
(``placement_group = "yes"``, ``boot_disk_gb = "200"``, ``regions = "us-east-1"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

if TYPE_CHECKING:
    from providers.base import Provider
    from shapes.catalog import Catalog
    from shapes.model import Shape


def _list_as_tuple(value: object) -> object:
    """TOML gives arrays as lists; strict mode takes only tuples. A list becomes a tuple
    (its items are still checked strictly); anything else, a string too, is refused."""
    return tuple(value) if isinstance(value, list) else value


StrTuple = Annotated[tuple[StrictStr, ...], BeforeValidator(_list_as_tuple)]
"""A TOML array of strings (a bare string is refused, not split into characters)."""

Regions = Annotated[tuple[StrictStr, ...], BeforeValidator(_list_as_tuple), Field(min_length=1)]


class CloudSection(BaseModel):
    """A cloud's ``[<cloud>]`` section of the configuration file. Subclasses set ``cloud``
    (the provider name) and add their own keys; unknown keys are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    cloud: ClassVar[str]
    regions: Regions


C = TypeVar("C", bound=CloudSection)


@dataclass(frozen=True)
class CloudSpec(Generic[C]):
    """One cloud, as the broker sees it.

    ``open(section, catalog)`` builds the adapter (a :class:`providers.base.Provider`;
    ``health()`` on it, if it has one, is what ``broker providers`` shows);
    ``refresh(section, bundled, today, credentials)`` builds a live catalog document
    (``credentials``: the edge's credential variables; None: this cloud has no live
    refresh); ``quota_bucket(shape)`` names the quota a shape draws on within its region
    and market (None: one bucket per GPU model, the default rule).
    """

    name: str
    section: type[C]
    open: Callable[[C, Catalog], Provider]
    refresh: Callable[[C, Catalog | None, date, Mapping[str, str]], dict[str, Any]] | None = None
    quota_bucket: Callable[[Shape], str] | None = None

    def __post_init__(self) -> None:
        if self.section.cloud != self.name:
            raise TypeError(f"{self.section.__name__} is the [{self.section.cloud}] section")
