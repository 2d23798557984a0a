"""Tooling around execq, never imported by a worker, beat or producer.

The demo, the benchmarks, the chaos run and its audit, the process supervisor
(``stack``), the service bootstrap (``services``), the simulator's admin client
(``sim_client``) and the polling helper (``polling``) live here; the tests use the
same supervisor, client and helper. The runtime in ``workers`` works without any
of it (``tests/unit/test_layout.py`` checks that importing the app imports nothing
from here).
"""
