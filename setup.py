"""The one packaging fact ``pyproject.toml`` cannot state: ``migrations/`` (at the top of the
repository, where ``alembic upgrade head`` finds it) ships inside the ``workers`` package as
``workers.migrations``, so an installed execq can migrate its database
(``workers.store.migrate``). Everything else about the package is in ``pyproject.toml``."""

from setuptools import find_packages, setup

MIGRATIONS = "workers.migrations"

setup(
    packages=[
        *find_packages(include=["workers", "workers.*", "tasks", "tasks.*", "exchange_sim*"]),
        *(
            MIGRATIONS + name.removeprefix("migrations")
            for name in find_packages(include=["migrations", "migrations.*"])
        ),
    ],
    package_dir={MIGRATIONS: "migrations"},
)
