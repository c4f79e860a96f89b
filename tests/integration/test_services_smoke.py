"""Each integration fixture is a working real service: Redis, PostgreSQL (via SQLAlchemy + psycopg), S3 (moto)."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import redis
import sqlalchemy as sa


def test_redis_set_get_and_durability_flags(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        key = f"dwf-test:{uuid.uuid4().hex}"
        assert client.set(key, b"\x00value\xff", ex=60)
        assert client.get(key) == b"\x00value\xff"
        assert client.delete(key) == 1
        if "DWF_TEST_REDIS_URL" not in os.environ:  # our own server: configured like compose's
            assert client.config_get("appendonly")["appendonly"] == "yes"
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        client.close()


def test_postgres_select_and_ddl(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.execute(sa.text("show server_version_num")).scalar_one() >= "150000"
        table = f"smoke_{uuid.uuid4().hex[:8]}"
        with engine.begin() as conn:
            conn.execute(sa.text(f"create table {table} (id serial primary key, body jsonb not null)"))
            conn.execute(sa.text(f"insert into {table} (body) values (cast(:b as jsonb))"), {"b": '{"epoch": 3}'})
        with engine.begin() as conn:
            assert conn.execute(sa.text(f"select body->>'epoch' from {table}")).scalar_one() == "3"
            conn.execute(sa.text(f"drop table {table}"))
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()


def test_s3_multipart_round_trip(s3_client: Any, s3_bucket: str) -> None:
    part_size = 5 * 1024 * 1024  # S3's minimum size for every part but the last
    parts_data = [os.urandom(part_size), os.urandom(part_size), os.urandom(1234)]
    key = "uploads/model.safetensors"
    upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    parts = []
    for number, data in enumerate(parts_data, start=1):
        resp = s3_client.upload_part(
            Bucket=s3_bucket, Key=key, PartNumber=number, UploadId=upload["UploadId"], Body=data
        )
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})
    s3_client.complete_multipart_upload(
        Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    whole = b"".join(parts_data)
    head = s3_client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == len(whole)
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(1 << 20):  # streamed, as the API will serve artifacts
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(whole).hexdigest()
    ranged = s3_client.get_object(Bucket=s3_bucket, Key=key, Range="bytes=0-9")["Body"].read()
    assert ranged == whole[:10]
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [obj["Key"] for obj in listed] == [key]


def test_s3_bucket_is_fresh(s3_client: Any, s3_bucket: str) -> None:
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
