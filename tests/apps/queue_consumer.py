"""Consumes COUNT messages: `queue_consumer.py URL QUEUE STYLE COUNT [fail]`.

STYLE: callback (basic_consume), generator (consume()), get (basic_get). With `fail`,
handling the last message raises RuntimeError("handler failed"), which ends the program.
"""

import sys
import time

import pika

url, queue, style, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fail = len(sys.argv) > 5 and sys.argv[5] == "fail"
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue)
handled = []


def handle(body):
    handled.append(body)
    if fail and len(handled) == count:
        raise RuntimeError("handler failed")


if style == "callback":
    def on_message(ch, method, properties, body):
        handle(body)
        ch.basic_ack(method.delivery_tag)
        if len(handled) == count:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
elif style == "generator":
    for method, _properties, body in channel.consume(queue, inactivity_timeout=20):
        if method is None:
            break
        handle(body)
        channel.basic_ack(method.delivery_tag)
        if len(handled) == count:
            break
    channel.cancel()
elif style == "get":
    deadline = time.time() + 20
    while len(handled) < count and time.time() < deadline:
        method, properties, body = channel.basic_get(queue)
        if method is None:
            time.sleep(0.05)
            continue
        handle(body)
        channel.basic_ack(method.delivery_tag)
channel.queue_delete(queue)
connection.close()
print("handled", len(handled))
