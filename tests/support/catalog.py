"""A comparable description of a database's schema, read from the catalogs.

Used to prove that sql/schema.sql and the migrations build the same thing,
and that a full rollback leaves the host exactly as it was.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from mpesa_sync.migrations import HISTORY_SCHEMA

# yoyo's bookkeeping stays behind after a rollback, as in any yoyo project:
# its tables, and the schema mpesa-sync keeps them in.
YOYO_TABLES = ("_yoyo_log", "_yoyo_migration", "_yoyo_version", "yoyo_lock", HISTORY_SCHEMA)

_USER_NAMESPACES = """
    SELECT oid FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND nspname NOT LIKE 'pg_temp%%' AND nspname NOT LIKE 'pg_toast_temp%%'
"""


def acl(column: str) -> str:
    """An ACL as sorted text: the order of its entries follows the order of
    the grants, which tells nothing about what they allow."""
    return f"(SELECT array_agg(a::text ORDER BY a::text) FROM unnest({column}) AS a)::text"


_QUERIES = {
    "schemas": f"""
        SELECT nspname, {acl("nspacl")}, obj_description(oid, 'pg_namespace')
        FROM pg_namespace WHERE oid IN ({_USER_NAMESPACES}) ORDER BY 1""",
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
               {acl("c.relacl")}, c.reloptions::text, obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relnamespace IN ({_USER_NAMESPACES}) ORDER BY 1, 2""",
    "columns": f"""
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace IN ({_USER_NAMESPACES}) AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'v', 'p')
        ORDER BY 1, 2, 3""",
    "constraints": f"""
        SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relnamespace IN ({_USER_NAMESPACES}) ORDER BY 1, 2, 3""",
    "indexes": f"""
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname::regnamespace IN ({_USER_NAMESPACES}) ORDER BY 1, 2, 3""",
    "triggers": f"""
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal AND c.relnamespace IN ({_USER_NAMESPACES})
        ORDER BY 1, 2""",
    "functions": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_functiondef(p.oid), {acl("p.proacl")}
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.pronamespace IN ({_USER_NAMESPACES}) ORDER BY 1, 2, 3""",
    "views": f"""
        SELECT schemaname, viewname, definition FROM pg_views
        WHERE schemaname::regnamespace IN ({_USER_NAMESPACES}) ORDER BY 1, 2""",
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
        FROM pg_policies ORDER BY 1, 2, 3""",
}


def describe(
    dsn: str, *, skip_yoyo: bool = True, owner: str | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """Every user-visible schema object of the database, as sorted rows.

    With ``owner``, that role's name reads ``<owner>`` wherever it appears
    (in ACLs), so that installs made by different roles compare equal.
    """
    with psycopg.connect(dsn) as conn:
        found = {name: conn.execute(sql).fetchall() for name, sql in _QUERIES.items()}
    if owner:
        found = {
            name: [tuple(_rename(v, owner) for v in row) for row in rows]
            for name, rows in found.items()
        }
    if skip_yoyo:
        for name, rows in found.items():
            found[name] = [
                r
                for r in rows
                if not any(str(v) in YOYO_TABLES or str(v).startswith(YOYO_TABLES) for v in r[:3])
            ]
    return found


def _rename(value: Any, owner: str) -> Any:
    if not isinstance(value, str):
        return value
    # in an ACL the role is a grantee (after "{" or ",") or a grantor (after "/")
    return re.sub(rf"(?<=[{{,/]){re.escape(owner)}(?=[=,}}])", "<owner>", value)


def table_data(dsn: str, tables: tuple[str, ...] = ("bars", "mpesa_credentials")) -> dict[str, Any]:
    """Every row of the host's tables, for comparing data before and after."""
    with psycopg.connect(dsn) as conn:
        return {
            table: conn.execute(
                f"SELECT to_jsonb(t) FROM public.{table} AS t ORDER BY id"
            ).fetchall()
            for table in tables
        }
