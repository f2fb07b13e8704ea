"""The real services the project tests against answer as they should."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from confluent_kafka import Consumer, Producer

from tests.support.kafka_helpers import committed_offsets, consume_all


def test_consumer_group_commits_the_offset_it_consumed_to(kafka_bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, key=f"k{i}", value=f"v{i}")
    assert producer.flush(10) == 0
    group = f"group-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    while len(values) < 10:
        for message in consumer.consume(10, timeout=1):
            assert message.error() is None
            values.append(message.value())
    consumer.commit(asynchronous=False)
    consumer.close()
    assert values == [f"v{i}".encode() for i in range(10)]
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 10}


def test_transaction_is_invisible_to_read_committed_until_commit_and_aborted_one_never(
        kafka_bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(10)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(30)

    committed = [m.value() for m in consume_all(kafka_bootstrap, topic, read_committed=True)]
    everything = [m.value() for m in consume_all(kafka_bootstrap, topic, read_committed=False)]
    assert committed == [b"committed"]
    assert everything == [b"aborted", b"committed"]


def test_postgres_round_trips_a_row(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    table = f"t_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id int primary key, note text)"))
        conn.execute(sa.text(f"INSERT INTO {table} VALUES (1, 'hello')"))
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT note FROM {table} WHERE id = 1")).scalar() == "hello"
        assert conn.execute(sa.text("SHOW server_version")).scalar().startswith(("15", "16", "17"))
    engine.dispose()


def test_s3_server_round_trips_an_object(s3_client, bucket: str) -> None:  # type: ignore[no-untyped-def]
    s3_client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"payload")
    assert s3_client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"payload"
    listed = s3_client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["a/b.txt"]


def test_broker_refuses_to_auto_create_topics(kafka_bootstrap: str) -> None:
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "x",
                         "allow.auto.create.topics": True})
    name = f"never-created-{uuid.uuid4().hex[:8]}"
    metadata = consumer.list_topics(name, timeout=10)
    consumer.close()
    assert metadata.topics[name].error is not None
