"""Event delivery: the proxy's in-memory queue, the shipper process, the on-disk spool and Kafka.

The proxy hands events to :class:`~splitwatch.service.delivery.publisher.EventPublisher`; a shipper
process per worker (:mod:`~splitwatch.service.delivery.shipper`) spools them and sends them to Kafka.
:mod:`~splitwatch.service.delivery.topic_reader` reads a topic back (demo, tests, tooling).
"""
