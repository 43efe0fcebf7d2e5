"""The Celery broker transport (infra.broker) against the real test Redis: a burst of messages
comes in one round trip and is recorded as unacknowledged exactly as kombu records one."""

import uuid

import pytest
from django.conf import settings
from kombu import Connection, Consumer, Producer, Queue

from infra.redis_client import get_redis


@pytest.fixture
def broker():
    with Connection(
        settings.REDIS_URL,
        transport="infra.broker:Transport",
        transport_options={"visibility_timeout": 300},
    ) as connection:
        yield connection


def _publish(connection, queue, count):
    producer = Producer(connection.channel())
    for index in range(count):
        producer.publish({"index": index}, routing_key=queue.name, declare=[queue])


def test_a_burst_is_taken_in_one_read_and_recorded_as_unacknowledged(broker):
    queue = Queue(f"test-intake-{uuid.uuid4().hex}")
    _publish(broker, queue, 10)
    channel = broker.channel()
    channel.basic_qos(prefetch_count=10)
    got = []
    consumer = Consumer(channel, queues=[queue], callbacks=[lambda _, m: got.append(m)])
    consumer.consume()
    broker.drain_events(timeout=5)  # one read of the broker
    assert sorted(m.payload["index"] for m in got) == list(range(10))
    redis = get_redis()
    assert redis.llen(queue.name) == 0
    tags = [m.delivery_tag for m in got]
    assert all(redis.hget("unacked", tag) for tag in tags)
    assert all(redis.zscore("unacked_index", tag) for tag in tags)

    # Acknowledged ones leave the unacknowledged set; the others go back to the queue when the
    # consumer lets go of them (kombu's own restore, reading what the batch recorded).
    for message in got[:4]:
        message.ack()
    assert not any(redis.hget("unacked", tag) for tag in tags[:4])
    channel.qos.restore_unacked()
    assert redis.llen(queue.name) == 6
    assert not any(redis.hget("unacked", tag) for tag in tags)
    redis.delete(queue.name)


def test_a_burst_takes_no_more_than_the_prefetch_allowance(broker):
    queue = Queue(f"test-intake-{uuid.uuid4().hex}")
    _publish(broker, queue, 10)
    channel = broker.channel()
    channel.basic_qos(prefetch_count=4)
    got = []
    consumer = Consumer(channel, queues=[queue], callbacks=[lambda _, m: got.append(m)])
    consumer.consume()
    broker.drain_events(timeout=5)
    assert len(got) == 4
    assert get_redis().llen(queue.name) == 6
    channel.qos.restore_unacked()
    get_redis().delete(queue.name)
