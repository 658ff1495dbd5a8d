"""Local tooling for the demo and the tests: a stub model server, child-process management, the demo.

Entry points: ``splitwatch demo`` (:func:`splitwatch.service.local.demo.run_demo`) and
``splitwatch stub-model`` (:func:`splitwatch.service.local.stub_model.main`).
"""
