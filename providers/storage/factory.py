"""One artifact store from its URL: the backend of the URL's scheme, imported only then.

Options (``[artifacts]`` in the configuration; all optional):

- ``endpoint``: the store's URL instead of the cloud's (an emulator: moto's S3 server,
  Azurite as ``http://127.0.0.1:10000/<account>``, a GCS stand-in);
- ``region`` (S3 only): the bucket's region, which presigned URLs are signed for;
- ``credentials_file`` (GCS only): a service account's key file, instead of
  ``GOOGLE_APPLICATION_CREDENTIALS``;
- ``public_url`` (``file://`` only): the broker service's URL that serves the store's blobs.

Credentials never go in the options: S3 uses boto3's chain (``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and ``~/.aws``, the instance's role); GCS a
service account's key file; Azure ``AZURE_STORAGE_KEY`` or ``AZURE_STORAGE_CONNECTION_STRING``.
"""

from __future__ import annotations

from collections.abc import Mapping

from providers.errors import ConfigError
from providers.storage.base import ArtifactStore, parse_store_url

OPTIONS: Mapping[str, frozenset[str]] = {
    "file": frozenset({"public_url"}),
    "s3": frozenset({"endpoint", "region"}),
    "gs": frozenset({"endpoint", "credentials_file"}),
    "az": frozenset({"endpoint"}),
}


def open_store(
    url: str,
    *,
    options: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ArtifactStore:
    """The store ``url`` names (ConfigError for a bad URL, an option its scheme does not
    take, or missing credentials a backend can tell at once). ``environ``: the credential
    variables the edge read (``broker.settings.CREDENTIAL_VARS``); nothing here reads the
    process environment."""
    env = environ or {}
    parsed = parse_store_url(url)
    given = {k: v for k, v in (options or {}).items() if v}
    unknown = sorted(set(given) - OPTIONS[parsed.scheme])
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[parsed.scheme])) or "none"
        raise ConfigError(
            f"{parsed.text}: a {parsed.scheme}:// store takes no option "
            f"{', '.join(map(repr, unknown))} (it takes: {allowed})"
        )
    if parsed.scheme == "s3":
        from providers.storage.s3 import S3Store

        return S3Store(parsed, endpoint_url=given.get("endpoint"), region=given.get("region"))
    if parsed.scheme == "gs":
        from providers.storage.gcs import GcsStore

        return GcsStore(
            parsed,
            endpoint=given.get("endpoint"),
            credentials_file=given.get("credentials_file")
            or env.get("GOOGLE_APPLICATION_CREDENTIALS"),
        )
    if parsed.scheme == "az":
        from providers.storage.azure import AzureStore

        return AzureStore(parsed, endpoint=given.get("endpoint"), environ=env)
    from providers.storage.file import FileStore

    return FileStore(parsed, public_url=given.get("public_url"))


__all__ = ["OPTIONS", "open_store"]
