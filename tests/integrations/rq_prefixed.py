"""A Queue subclass that keeps its queues under a key prefix of its own (as in RQ's own suite).

Its keys share RQ's ``rq:queues`` set with the base class's, where ``rq.Queue.all()`` refuses
them (``ValueError: Not a valid RQ queue key``). ``RQ_QUEUE_CLASS`` makes a worker use it.
"""

from rq import Queue


class PrefixedQueue(Queue):
    redis_queue_namespace_prefix = "otj:prefixed:queue:"
