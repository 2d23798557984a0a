"""Tooling around execq, never imported by a worker, beat or producer.

The demo, the benchmarks, the chaos run and its audit, the process supervisor
and the service bootstrap live here; the runtime in ``workers`` works without
any of it (``tests/unit/test_layout.py`` checks that importing the app
imports nothing from here).
"""
