"""The routing proxy: request parsing, assignment, upstream forwarding, the HTTP routes and the server.

Entry point: ``splitwatch proxy`` (:func:`splitwatch.service.proxy.server.serve_single` and
``serve_workers``); the ASGI app is built by :func:`splitwatch.service.proxy.app.create_app`.
"""
