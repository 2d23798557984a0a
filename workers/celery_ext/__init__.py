"""Extensions of Celery and kombu that execq's workers run with.

- ``broker``: the Redis broker transport (a consumer that survives a Redis restart);
- ``consumer``: the worker consumer that sends task events in batches.
"""
