"""fsspec filesystems for ``gs://`` and ``az://`` locations, built from Airflow connections.

GCS goes through the google provider (``google_cloud_default`` or a named connection of type
``google_cloud_platform``): the provider resolves the credentials, project and extras (``gcs.endpoint`` for an
emulator or a private endpoint), and the filesystem is gcsfs's plain JSON-API ``GCSFileSystem``. gcsfs's default
class asks the gRPC Storage Control API for every bucket's layout before using it (a round trip per bucket and
operation when that call is denied, and a 60 s stall against an endpoint that does not serve gRPC); the plain
class reads and lists ordinary and hierarchical-namespace buckets alike. Zonal ("Rapid") buckets are not
supported.

Azure Blob reads a ``wasb`` connection (``wasb_default`` or named) in the order the microsoft-azure provider's
``WasbHook`` does: a ``connection_string`` extra; a service principal (``tenant_id`` extra, login = client id,
password = client secret); an account key (``shared_access_key`` extra, the password, or an ``account_key``
extra; login = account name); a ``sas_token`` extra (a token, or a full account URL with the token); else the
default Azure credential chain (managed / workload identity). The connection's host is the account URL; it
defaults to ``https://<login>.blob.core.windows.net`` and may be any endpoint (Azurite, a private endpoint).
The provider's own ``abfs`` filesystem does not cover ``az://``, ignores the account URL and ignores the login
as account name, hence this module.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.io import get_fs
from fsspec import AbstractFileSystem

DEFAULT_GCS_CONN_ID = "google_cloud_default"
DEFAULT_AZURE_CONN_ID = "wasb_default"


def gcs_filesystem(conn_id: str | None) -> AbstractFileSystem:
    """A fresh gcsfs filesystem with the google provider's resolution of connection ``conn_id``."""
    from gcsfs.core import GCSFileSystem

    provider_fs = get_fs("gs", conn_id or DEFAULT_GCS_CONN_ID)
    options = {k: v for k, v in provider_fs.storage_options.items() if v is not None}
    return GCSFileSystem(*provider_fs.storage_args, **options, skip_instance_cache=True)


def _extra(extras: dict[str, Any], name: str) -> Any:
    """An extra by its name or its legacy ``extra__wasb__`` name; empty values count as unset."""
    return extras.get(name) or extras.get(f"extra__wasb__{name}") or None


def azure_account_url(host: str | None, login: str | None) -> str:
    """The blob service URL of a connection: its host (with https:// added if bare), else the login's."""
    if not host:
        return f"https://{login}.blob.core.windows.net"
    return (host if "://" in host else f"https://{host}").rstrip("/")


def _account_name(account_url: str) -> str:
    """``acct`` of ``https://acct.blob.core.windows.net``, or of a path-style emulator URL ``http://h:p/acct``."""
    parts = urlsplit(account_url)
    path = parts.path.strip("/")
    return path.split("/", 1)[0] if path else (parts.hostname or "").split(".", 1)[0]


def azure_filesystem(conn_id: str | None) -> AbstractFileSystem:
    """A fresh adlfs filesystem for the ``wasb`` connection ``conn_id`` (see the module docstring)."""
    from adlfs import AzureBlobFileSystem

    # azure-core logs every request and response at INFO; the provider's WasbHook quiets it the same way
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    conn = BaseHook.get_connection(conn_id or DEFAULT_AZURE_CONN_ID)
    extras = conn.extra_dejson or {}
    fresh = {"skip_instance_cache": True}
    connection_string = _extra(extras, "connection_string")
    if connection_string:
        return AzureBlobFileSystem(connection_string=connection_string, **fresh)

    tenant_id = _extra(extras, "tenant_id")
    account_url = azure_account_url(conn.host, None if tenant_id else conn.login)
    account_name = _extra(extras, "account_name") or (None if tenant_id else conn.login) or _account_name(
        account_url
    )
    parts = urlsplit(account_url)
    if tenant_id:
        return AzureBlobFileSystem(
            account_name=account_name,
            account_host=parts.netloc + parts.path,
            tenant_id=tenant_id,
            client_id=conn.login,
            client_secret=conn.password,
            **fresh,
        )
    # adlfs builds https://<account_host> itself; a connection string carries any endpoint (http emulators too)
    key = _extra(extras, "shared_access_key") or conn.password or _extra(extras, "account_key")
    if key:
        return AzureBlobFileSystem(
            connection_string=(
                f"DefaultEndpointsProtocol={parts.scheme};AccountName={account_name};AccountKey={key};"
                f"BlobEndpoint={account_url};"
            ),
            **fresh,
        )
    sas_token = _extra(extras, "sas_token")
    if sas_token:
        if "://" in sas_token:  # a full account URL with the token as its query
            sas_parts = urlsplit(sas_token)
            account_url = f"{sas_parts.scheme}://{sas_parts.netloc}{sas_parts.path}".rstrip("/")
            sas_token = sas_parts.query
        return AzureBlobFileSystem(
            connection_string=f"BlobEndpoint={account_url};SharedAccessSignature={sas_token.lstrip('?')}",
            **fresh,
        )
    identity = {"managed_identity_client_id": _extra(extras, "managed_identity_client_id")}
    return AzureBlobFileSystem(
        account_name=account_name,
        account_host=parts.netloc + parts.path,
        anon=False,
        **{k: v for k, v in identity.items() if v},
        **fresh,
    )
