"""Content-addressed payload blobs in S3-compatible object storage.

A blob lives at ``{tenant}/blobs/{sha256}``: written once (a second put of the same bytes
is a HEAD and nothing more), verified against its name when read. botocore errors are
translated here and nowhere else.
"""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from journal.errors import AccessDenied, BlobCorrupt, BlobError, BlobMissing, StoreUnavailable
from journal.events import BlobRef
from journal.keys import blob_key
from journal.settings import Settings

_MISSING = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


def s3_client(settings: Settings, *, read_timeout: float = 30, attempts: int = 2) -> Any:
    """A boto3 S3 client for the configured endpoint (path-style, short timeouts, few retries)."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, connect_timeout=3, read_timeout=read_timeout,
            retries={"max_attempts": attempts, "mode": "standard"},
        ),
    )


def _translate(e: Exception, what: str) -> Exception:
    if isinstance(e, botocore.exceptions.ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in _DENIED:
            return AccessDenied(f"object storage refused {what}: {code}; check JOURNAL_S3_ACCESS_KEY/SECRET_KEY")
        return BlobError(f"object storage failed {what}: {code} {e}")
    return StoreUnavailable(f"object storage unreachable during {what}: {e}; check JOURNAL_S3_URL and that "
                            "the S3 server runs")


class BlobStore:
    """Put and get payload blobs for any tenant, under that tenant's prefix."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        return cls(s3_client(settings), settings.s3_bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in _MISSING:
                raise _translate(e, f"head_bucket {self.bucket}") from e
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise _translate(e, f"head_bucket {self.bucket}") from e
        try:
            self._s3.create_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise _translate(e, f"create_bucket {self.bucket}") from e
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise _translate(e, f"create_bucket {self.bucket}") from e

    def put(self, tenant: str, data: bytes) -> BlobRef:
        """Store ``data`` (once) and return its reference."""
        ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
        key = blob_key(tenant, ref.sha256)
        if self.exists(key):
            return ref
        for attempt in (1, 2):
            try:
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=data)
                return ref
            except botocore.exceptions.ClientError as e:
                # The bucket could not be made when the client started (S3 was down): make it now.
                if attempt == 1 and str(e.response.get("Error", {}).get("Code")) == "NoSuchBucket":
                    self.ensure_bucket()
                    continue
                raise _translate(e, f"put {key}") from e
            except (botocore.exceptions.BotoCoreError, OSError) as e:
                raise _translate(e, f"put {key}") from e
        return ref

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except botocore.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _MISSING:
                return False
            raise _translate(e, f"head {key}") from e
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise _translate(e, f"head {key}") from e

    def put_object(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` (the archive's segments and manifests; their keys name their content)."""
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        except botocore.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) == "NoSuchBucket":
                self.ensure_bucket()
                self.put_object(key, data)
                return
            raise _translate(e, f"put {key}") from e
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise _translate(e, f"put {key}") from e

    def get_object(self, key: str) -> bytes:
        """The bytes at ``key``; ``BlobMissing`` if there is no such object."""
        try:
            data: bytes = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return data
        except botocore.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _MISSING:
                raise BlobMissing(f"s3://{self.bucket}/{key}") from e
            raise _translate(e, f"get {key}") from e
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise _translate(e, f"get {key}") from e

    def get(self, tenant: str, ref: BlobRef) -> bytes:
        """The blob's bytes, verified against its digest; ``BlobMissing`` if it is gone."""
        key = blob_key(tenant, ref.sha256)
        data = self.get_object(key)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobCorrupt(f"blob s3://{self.bucket}/{key} does not match its sha256; restore it from backup")
        return data

