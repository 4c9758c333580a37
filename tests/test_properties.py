"""Random operation sequences against a model of the rule (hypothesis).

The model is a dict of credential rows; after every operation the database's
bars must equal what the model says, and the events written must be exactly
the model's real changes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.database import Database

N_BARS = 4
ENVS = ("sandbox", "production")
ACTIVE = st.sampled_from([True, False, None])
BAR = st.integers(min_value=0, max_value=N_BARS - 1)
ENV = st.sampled_from(ENVS)

OPERATIONS = st.one_of(
    st.tuples(st.just("insert"), BAR, ENV, ACTIVE),
    st.tuples(st.just("set_active"), BAR, ENV, ACTIVE),
    st.tuples(st.just("delete"), BAR, ENV),
    st.tuples(st.just("move"), BAR, ENV, BAR),
    st.tuples(st.just("bar_write"), BAR, st.sampled_from([True, False, None])),
    st.tuples(st.just("set_all_active"), ACTIVE),
    st.tuples(st.just("truncate")),
    st.tuples(st.just("rolled_back"), BAR, ENV, ACTIVE),
)


@dataclass
class Model:
    creds: dict[tuple[int, str], bool | None] = field(default_factory=dict)
    enabled: list[bool] = field(default_factory=lambda: [False] * N_BARS)
    changes: int = 0

    def expected(self, bar: int) -> bool:
        return any(active is True for (b, _), active in self.creds.items() if b == bar)

    def settle(self) -> None:
        for bar in range(N_BARS):
            if self.enabled[bar] != self.expected(bar):
                self.enabled[bar] = self.expected(bar)
                self.changes += 1


def apply(conn: psycopg.Connection, bars: list[uuid.UUID], model: Model, op: tuple) -> None:
    kind, *args = op
    if kind == "insert":
        bar, env, active = args
        if (bar, env) in model.creds:
            return
        conn.execute(
            """INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                            consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
                        VALUES (%s, %s, '174379', 'k', 's', 'p', %s)""",
            (bars[bar], env, active),
        )
        model.creds[(bar, env)] = active
    elif kind == "set_active":
        bar, env, active = args
        conn.execute(
            "UPDATE mpesa_credentials SET is_active = %s WHERE tenant_id = %s AND environment = %s",
            (active, bars[bar], env),
        )
        if (bar, env) in model.creds:
            model.creds[(bar, env)] = active
    elif kind == "delete":
        bar, env = args
        conn.execute(
            "DELETE FROM mpesa_credentials WHERE tenant_id = %s AND environment = %s",
            (bars[bar], env),
        )
        model.creds.pop((bar, env), None)
    elif kind == "move":
        bar, env, target = args
        if (bar, env) not in model.creds or (target, env) in model.creds:
            return
        conn.execute(
            "UPDATE mpesa_credentials SET tenant_id = %s WHERE tenant_id = %s AND environment = %s",
            (bars[target], bars[bar], env),
        )
        model.creds[(target, env)] = model.creds.pop((bar, env))
    elif kind == "bar_write":
        bar, value = args
        conn.execute("UPDATE bars SET mpesa_enabled = %s WHERE id = %s", (value, bars[bar]))
    elif kind == "set_all_active":
        (active,) = args
        conn.execute("UPDATE mpesa_credentials SET is_active = %s", (active,))
        model.creds = dict.fromkeys(model.creds, active)
    elif kind == "truncate":
        conn.execute("TRUNCATE mpesa_credentials")
        model.creds.clear()
    elif kind == "rolled_back":
        bar, env, active = args
        with conn.transaction(force_rollback=True):
            conn.execute(
                """INSERT INTO mpesa_credentials (tenant_id, environment,
                                business_shortcode, consumer_key_enc, consumer_secret_enc,
                                passkey_enc, is_active)
                            VALUES (%s, %s, '174379', 'k', 's', 'p', %s)
                            ON CONFLICT (tenant_id, environment)
                            DO UPDATE SET is_active = excluded.is_active""",
                (bars[bar], env, active),
            )
    model.settle()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(OPERATIONS, min_size=1, max_size=25))
def test_random_sequences_match_the_model(db: Database, ops: list[tuple]) -> None:
    with db.connect() as conn:
        # Each example starts from no bars, no events.
        conn.execute("TRUNCATE bars, mpesa_sync.status_events CASCADE")
        bars = [
            conn.execute("INSERT INTO bars (name) VALUES (%s) RETURNING id", (f"b{i}",)).fetchone()[
                0
            ]
            for i in range(N_BARS)
        ]
        model = Model()
        for op in ops:
            apply(conn, bars, model, op)
            actual = [
                conn.execute("SELECT mpesa_enabled FROM bars WHERE id = %s", (bar,)).fetchone()[0]
                for bar in bars
            ]
            assert actual == model.enabled, op
        events = conn.execute("SELECT count(*) FROM mpesa_sync.status_events").fetchone()[0]
        assert events == model.changes
