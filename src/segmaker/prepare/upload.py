"""Copy prepared channels to S3 with boto3, and the `estimator.fit({...})` dictionary that uses them.

boto3 is optional (`pip install segmaker[s3]`): only `--upload` imports it. It finds credentials, region and
endpoint the usual way (environment, ~/.aws, instance role; `AWS_ENDPOINT_URL` for S3-compatible stores).
"""

from pathlib import Path
from typing import Dict, Optional, Tuple

from segmaker.errors import UserError


def parse_s3_uri(uri: str) -> Tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; UserError for anything else."""
    if not uri.startswith("s3://") or not uri[len("s3://"):].split("/", 1)[0]:
        raise UserError(f"--upload needs an s3://bucket/prefix URI, not {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def upload_folder(folder: Path, bucket: str, prefix: str) -> int:
    """Upload every file under `folder` to s3://bucket/prefix/<relative path>; the number of files."""
    client = _s3_client()
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = "/".join(part for part in (prefix, path.relative_to(folder).as_posix()) if part)
        try:
            client.upload_file(str(path), bucket, key)
        except Exception as exc:  # boto3's errors: no credentials, no bucket, access denied, no network
            raise UserError(f"cannot upload {path} to s3://{bucket}/{key}: {exc}") from None
        count += 1
    return count


def _s3_client():
    try:
        import boto3
    except ImportError:
        raise UserError("--upload needs boto3: pip install 'segmaker[s3]' (or boto3)") from None
    return boto3.client("s3")


def fit_inputs(written, upload: Optional[str]) -> Dict[str, str]:
    """{channel: URI} for `estimator.fit`: S3 URIs after an upload, else file:// URIs for local mode."""
    if upload:
        base = upload.rstrip("/")
        return {channel: f"{base}/{channel}" for channel in written.channels}
    return {channel: (written.output / channel).resolve().as_uri() for channel in written.channels}
