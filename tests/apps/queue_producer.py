"""Publishes messages to a RabbitMQ queue: `queue_producer.py URL QUEUE COUNT [HEADERS]`.

HEADERS (for bad-message tests): `none` (no properties), `nested` (a table where the
traceparent should be), or a traceparent value sent as is.
"""

import sys

import pika

url, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else ""
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue)
for i in range(count):
    if mode == "none":
        props = None
    elif mode == "nested":
        props = pika.BasicProperties(headers={"traceparent": {"a": 1}, "tracestate": [1, 2]})
    elif mode:
        props = pika.BasicProperties(headers={"traceparent": mode, "n": i})
    else:
        props = pika.BasicProperties(headers={"n": i}, message_id="msg-%d" % i)
    channel.basic_publish(exchange="", routing_key=queue, body=b"body-%d" % i, properties=props)
connection.close()
print("published", count)
