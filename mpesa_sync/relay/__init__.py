"""The live relay: every status event, in order, on stdout and over HTTP/SSE.

Entered only through ``mpesa-sync relay`` (:func:`service.serve`), so nothing
else in the package loads its dependencies (httptools, the pool).

- :mod:`.events`: one event as a JSON line and an SSE frame; positions, the
  log's state, resets.
- :mod:`.log`: reading the log: catch-up pages, position checks and resets,
  in one place (:class:`~.log.LogCursor`).
- :mod:`.listener`: the one LISTEN connection and the relay's own catch-up.
- :mod:`.fanout`: the index of bar -> clients, and the writes to them.
- :mod:`.wire`: the SSE frames and HTTP answers as bytes.
- :mod:`.http`: a small HTTP/1.1 server on asyncio protocols.
- :mod:`.sse` and :mod:`.app`: the ``/events`` stream, and the other routes
  (CORS for the customer's routes).
- :mod:`.metrics`: ``/metrics``.
- :mod:`.service`: the process: stdout, the HTTP server, signals, open files.
- :mod:`.workers`: ``--workers N``: N processes on one port.
"""
