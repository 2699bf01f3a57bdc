"""A RabbitMQ consumer for the message-header fuzz test: `python fault_consumer.py AMQP_URL QUEUE`.

Consumes with a basic_consume callback, prints `ok <message id>` per message, and stops on
a message whose body is b"stop".
"""

import sys

import pika

connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
queue = sys.argv[2]
channel.queue_declare(queue=queue, auto_delete=True)


def on_message(ch, method, properties, body):
    ch.basic_ack(method.delivery_tag)
    if body == b"stop":
        ch.stop_consuming()
        return
    print("ok", properties.message_id, flush=True)


channel.basic_consume(queue=queue, on_message_callback=on_message)
print("consuming", flush=True)
channel.start_consuming()
connection.close()
