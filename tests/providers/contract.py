"""The contract every provider passes: the simulated cloud now, each cloud adapter later.

Written against :class:`providers.base.Provider` only. To run it against a provider::

    class TestMyCloudContract(ProviderContract):
        def make_provider(self, tmp_path: Path) -> Provider: ...
        def provider_with_no_capacity(self, tmp_path: Path) -> Provider: ...

``launch_target`` picks the shape and zone to launch (override it where an emulator only
knows some instance types); a provider that keeps a partial gang when it runs out of
capacity sets ``all_or_nothing = False``. Ids, tokens and tag values are short lowercase
strings, valid as GCP labels, AWS client tokens and Azure names.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import pytest

from providers.base import (
    TAG_ATTEMPT,
    TAG_BROKER,
    TAG_CLUSTER,
    LaunchRequest,
    Node,
    NodeState,
    Provider,
)
from providers.errors import CapacityError, Reach
from shapes.model import Shape


def ids(nodes: Iterable[Node]) -> list[str]:
    return [n.provider_id for n in nodes]


def new_cluster_id() -> str:
    return f"ct-{uuid.uuid4().hex[:12]}"


class ProviderContract:
    """Mixin with the contract tests; subclasses implement the two ``make`` hooks."""

    all_or_nothing: ClassVar[bool] = True  # False: a capacity error may leave a partial gang
    gang_size: ClassVar[int] = 3
    launch_timeout: ClassVar[float] = 60.0

    # -- hooks -----------------------------------------------------------------------------

    def make_provider(self, tmp_path: Path) -> Provider:
        """A provider with room for a few gangs of ``gang_size`` nodes of the launch target."""
        raise NotImplementedError

    def provider_with_no_capacity(self, tmp_path: Path) -> Provider:
        """A provider whose launch target has fewer than ``gang_size`` nodes free."""
        raise NotImplementedError

    def launch_target(self, provider: Provider) -> tuple[Shape, str]:
        """The shape and zone the contract launches: the first listed shape with a zone."""
        for shape in provider.list_shapes():
            if shape.zones:
                return shape, shape.zones[0]
        pytest.fail(f"{provider.name} lists no shape with a zone")

    # -- helpers ---------------------------------------------------------------------------

    @pytest.fixture
    def provider(self, tmp_path: Path) -> Provider:
        return self.make_provider(tmp_path)

    def request(
        self,
        provider: Provider,
        cluster_id: str | None = None,
        *,
        count: int | None = None,
        token: str | None = None,
    ) -> LaunchRequest:
        shape, zone = self.launch_target(provider)
        return LaunchRequest(
            shape=shape,
            zone=zone,
            count=self.gang_size if count is None else count,
            token=token or str(uuid.uuid4()),
            tags={
                TAG_BROKER: "contract",
                TAG_CLUSTER: cluster_id or new_cluster_id(),
                TAG_ATTEMPT: "1",
            },
        )

    def launch(self, provider: Provider, request: LaunchRequest) -> list[Node]:
        return provider.launch(request, timeout=self.launch_timeout)

    # -- the contract ----------------------------------------------------------------------

    def test_is_a_provider(self, provider: Provider) -> None:
        assert isinstance(provider, Provider)
        assert isinstance(provider.name, str) and provider.name

    def test_launch_target_is_listed(self, provider: Provider) -> None:
        shape, zone = self.launch_target(provider)
        listed = {s.key: s for s in provider.list_shapes()}
        assert shape.key in listed
        assert zone in listed[shape.key].zones

    def test_launch_returns_a_running_gang(self, provider: Provider) -> None:
        request = self.request(provider)
        nodes = self.launch(provider, request)

        assert len(nodes) == request.count
        assert len(set(ids(nodes))) == request.count
        addresses = [n.private_ip for n in nodes]
        assert all(a is not None and ipaddress.ip_address(a).is_private for a in addresses)
        assert len(set(addresses)) == request.count
        for node in nodes:
            assert node.state is NodeState.RUNNING
            assert node.provider == provider.name
            assert node.shape_id.lower() == request.shape.key
            assert node.region == request.shape.region
            assert node.zone == request.zone
            assert dict(node.tags).items() >= dict(request.tags).items()
            assert node.cluster_id == request.tags[TAG_CLUSTER]

    def test_describe_finds_exactly_the_cluster(self, provider: Provider) -> None:
        first = self.request(provider)
        other = self.request(provider, count=1)
        nodes = self.launch(provider, first)
        self.launch(provider, other)

        found = provider.describe(first.tags[TAG_CLUSTER])
        assert sorted(ids(found)) == sorted(ids(nodes))
        assert all(n.state in (NodeState.PENDING, NodeState.RUNNING) for n in found)
        assert provider.describe(new_cluster_id()) == []

    def test_same_token_twice_makes_one_gang(self, provider: Provider) -> None:
        request = self.request(provider)
        first = self.launch(provider, request)
        again = self.launch(provider, request)

        assert ids(again) == ids(first)  # the same nodes, in the same (stable) order
        assert len(provider.describe(request.tags[TAG_CLUSTER])) == request.count

    def test_terminate_removes_the_nodes_and_may_be_repeated(self, provider: Provider) -> None:
        gone = self.request(provider)
        kept = self.request(provider, count=1)
        nodes = self.launch(provider, gone)
        survivors = self.launch(provider, kept)

        provider.terminate(nodes)

        assert provider.describe(gone.tags[TAG_CLUSTER]) == []
        tagged = set(ids(provider.list_tagged()))
        assert not tagged & set(ids(nodes))
        assert set(ids(survivors)) <= tagged
        assert ids(provider.describe(kept.tags[TAG_CLUSTER])) == ids(survivors)
        provider.terminate(nodes)  # already gone: fine
        provider.terminate([])

    def test_list_tagged_finds_every_cluster(self, provider: Provider) -> None:
        a, b = self.request(provider, count=2), self.request(provider, count=1)
        nodes_a, nodes_b = self.launch(provider, a), self.launch(provider, b)

        tagged = provider.list_tagged()
        assert set(ids(nodes_a)) | set(ids(nodes_b)) <= set(ids(tagged))
        clusters = {n.provider_id: n.cluster_id for n in tagged}
        assert {clusters[i] for i in ids(nodes_a)} == {a.tags[TAG_CLUSTER]}
        assert {clusters[i] for i in ids(nodes_b)} == {b.tags[TAG_CLUSTER]}

    def test_capacity_error_is_zone_scoped_and_leaves_nothing_behind(self, tmp_path: Path) -> None:
        provider = self.provider_with_no_capacity(tmp_path)
        request = self.request(provider)

        with pytest.raises(CapacityError) as caught:
            self.launch(provider, request)

        assert caught.value.reach is Reach.ZONE
        assert caught.value.provider == provider.name
        assert caught.value.code
        cluster = request.tags[TAG_CLUSTER]
        left = provider.describe(cluster)
        if self.all_or_nothing:
            assert left == []
            assert all(n.cluster_id != cluster for n in provider.list_tagged())
        else:  # a partial gang: findable by its tags, and the caller can clean it up
            assert len(left) < request.count
            assert all(dict(n.tags).items() >= dict(request.tags).items() for n in left)
            provider.terminate(left)
            assert provider.describe(cluster) == []
