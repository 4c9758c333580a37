"""The live relay: every status event, in order, on stdout and over HTTP/SSE.

Entered only through ``mpesa-sync relay`` (:func:`service.serve`), so nothing
else in the package loads its dependencies (uvicorn, starlette, the pool).

- :mod:`.listener`: the one LISTEN connection, catch-up reads, resets, fan-out.
- :mod:`.events`: one event as a JSON line and an SSE frame; positions, the
  log's state, resets.
- :mod:`.app` and :mod:`.sse`: the HTTP routes (CORS for the customer's
  routes) and the ``/events`` stream.
- :mod:`.metrics`: ``/metrics``.
- :mod:`.service`: the process: stdout, the HTTP server, signals.
"""
