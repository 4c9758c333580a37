"""A small stand-in for the Supabase API that supabase-js talks to, for the
client's browser tests: Realtime's WebSocket (Phoenix channels, serializer
2.0.0's JSON frames: join, reply, heartbeat, broadcast, and a forced close),
PostgREST's ``POST /rest/v1/rpc/mpesa_status`` (the real function, called as
``anon``), and the test page with its scripts.

Broadcasts come from the database as Realtime sends them, after commit: a
thread reads the committed rows of realtime.messages and pushes each new one
to the sockets joined to its topic. A test can also push one of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from mpesa_sync.relay.service import listen_socket
from tests.support.database import Database

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SUPABASE_UMD = JS_DIR / "node_modules/@supabase/supabase-js/dist/umd/supabase.js"
CLIENT_JS = Path(__file__).resolve().parents[2] / "mpesa_sync/static/mpesa-status.js"

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>mpesa status</title>
<p>M-Pesa: <span id="mpesa">loading</span> at event <span id="event"></span></p>
<script src="/supabase.js"></script>
<script type="module">
  import { watchMpesaStatus } from "/mpesa-status.js";
  const client = supabase.createClient(location.origin, "anon-key", {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { reconnectAfterMs: () => 50 },
  });
  const bar = new URLSearchParams(location.search).get("bar");
  window.states = [];
  window.stop = watchMpesaStatus(client, bar, (state) => {
    window.states.push(state);
    document.querySelector("#mpesa").textContent = state ? String(state.mpesa_enabled) : "none";
    document.querySelector("#event").textContent = state ? String(state.event_id) : "";
  });
</script>
"""


@dataclass
class RealtimeStandIn:
    """The server's state, shared between its event loop and the test."""

    db: Database
    accepting: bool = True
    reads: int = 0  # state calls answered
    sockets: set[WebSocket] = field(default_factory=set)
    joined: dict[WebSocket, set[str]] = field(default_factory=dict)
    delivered: dict[int, int] = field(default_factory=dict)  # event id -> sockets reached
    seen: set[str] = field(default_factory=set)  # realtime.messages ids already handled
    loop: asyncio.AbstractEventLoop | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what tests call, from their own thread ---------------------------------------

    def broadcast(self, topic: str, payload: dict[str, Any]) -> None:
        """Push a broadcast to the sockets joined to ``topic`` and wait until sent."""
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self._broadcast(topic, payload), self.loop).result(10)

    def close_all(self) -> None:
        """Close every socket, as a lost connection or a Realtime restart would."""
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self._close_all(), self.loop).result(10)

    def connected(self) -> int:
        with self.lock:
            return len(self.sockets)

    # -- the server's side -----------------------------------------------------------------

    async def _broadcast(self, topic: str, payload: dict[str, Any]) -> int:
        frame = json.dumps(
            [
                None,
                None,
                f"realtime:{topic}",
                "broadcast",
                {"type": "broadcast", "event": "status", "payload": payload},
            ]
        )
        reached = 0
        for ws, topics in list(self.joined.items()):
            if f"realtime:{topic}" in topics:
                await ws.send_text(frame)
                reached += 1
        return reached

    async def _close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1011)

    async def websocket(self, ws: WebSocket) -> None:
        if not self.accepting:
            await ws.close()  # before accept: the handshake is refused
            return
        await ws.accept()
        with self.lock:
            self.sockets.add(ws)
        self.joined[ws] = set()
        try:
            while True:
                join_ref, ref, topic, event, _payload = json.loads(await ws.receive_text())
                if event == "phx_join":
                    self.joined[ws].add(topic)
                elif event == "phx_leave":
                    self.joined[ws].discard(topic)
                reply = {"status": "ok", "response": {}}
                await ws.send_text(json.dumps([join_ref, ref, topic, "phx_reply", reply]))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.joined.pop(ws, None)
            with self.lock:
                self.sockets.discard(ws)

    async def rpc(self, request: Request) -> Response:
        body = await request.json()
        state = await asyncio.to_thread(self._state, body["p_bar_id"])
        self.reads += 1
        return JSONResponse(state)

    def _state(self, bar_id: str) -> Any:
        """public.mpesa_status as PostgREST calls it for the anon key."""
        with self.db.connect(autocommit=False) as conn:
            conn.execute("SET LOCAL ROLE anon")
            conn.execute("SELECT set_config('request.jwt.claims', '{\"role\":\"anon\"}', true)")
            row = conn.execute("SELECT public.mpesa_status(%s)", (bar_id,)).fetchone()
            conn.rollback()
        return row[0] if row else None

    async def relay_messages(self, stop: asyncio.Event) -> None:
        """Realtime's side of Broadcast from the database: each committed row
        of realtime.messages, once, in event id order within what one read finds."""
        async with await psycopg.AsyncConnection.connect(self.db.dsn, autocommit=True) as conn:
            while not stop.is_set():
                rows = await (
                    await conn.execute(
                        "SELECT id::text, topic, payload FROM realtime.messages"
                        " WHERE extension = 'broadcast' AND event = 'status'"
                        " ORDER BY (payload ->> 'event_id')::bigint"
                    )
                ).fetchall()
                for message_id, topic, payload in rows:
                    if message_id in self.seen:
                        continue
                    reached = await self._broadcast(topic, payload)
                    self.seen.add(message_id)
                    self.delivered[int(payload["event_id"])] = reached
                # a polling interval, not synchronisation: tests wait on what was seen
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)

    def app(self) -> Starlette:
        async def page(_: Request) -> Response:
            return HTMLResponse(PAGE)

        async def supabase_js(_: Request) -> Response:
            return FileResponse(SUPABASE_UMD, media_type="text/javascript")

        async def client_js(_: Request) -> Response:
            return FileResponse(CLIENT_JS, media_type="text/javascript")

        return Starlette(
            routes=[
                Route("/", page),
                Route("/supabase.js", supabase_js),
                Route("/mpesa-status.js", client_js),
                Route("/rest/v1/rpc/mpesa_status", self.rpc, methods=["POST"]),
                WebSocketRoute("/realtime/v1/websocket", self.websocket),
            ]
        )


@contextmanager
def realtime_standin(db: Database) -> Iterator[tuple[RealtimeStandIn, str]]:
    """The stand-in serving in a thread of its own; yields it and its base URL."""
    standin = RealtimeStandIn(db)
    sock = listen_socket("127.0.0.1", 0)
    config = uvicorn.Config(
        standin.app(),
        log_config=None,
        lifespan="off",
        ws="websockets-sansio",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    ready = threading.Event()
    stop_relay: dict[str, asyncio.Event] = {}

    async def run() -> None:
        standin.loop = asyncio.get_running_loop()
        stop_relay["event"] = asyncio.Event()
        relay = asyncio.create_task(standin.relay_messages(stop_relay["event"]))
        serve = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # uvicorn sets a flag and offers nothing to await
            if serve.done() or relay.done():
                break
            await asyncio.sleep(0.01)
        ready.set()
        await serve
        stop_relay["event"].set()
        await relay

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(20) and server.started, "the stand-in Realtime server did not start"
        yield standin, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
