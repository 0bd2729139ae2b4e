"""The versioned PostgreSQL schema of `PostgresStore`: an ordered list of migrations.

Each migration is a version number, a one-line description and SQL steps. `{schema}` in a step
is replaced by the quoted schema name. The versions applied to a schema are rows of its
`chatstate_migrations` table; `apply_migrations` runs the missing ones in order, each in its own
transaction, under an advisory lock so that several processes starting at once migrate once.

Never edit a migration that has shipped: add a new one. A schema whose newest applied version
is above `LATEST_VERSION` was written by newer code; it is refused with `SchemaError` and left
untouched.

Time columns are float8 seconds since the epoch, like the record. `warn_at`, `expires_at` and
`purge_at` on `sessions` are the *due index* (the record's `due_at(kind)`), not copies of the
record's fields: `claim_due` pushes them forward, and each commit rewrites them.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, SchemaError

SCHEMA_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MIGRATIONS_TABLE = "chatstate_migrations"

log = logging.getLogger("chatstate.stores.postgres")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    steps: tuple[str, ...]


def quote_schema(schema: str) -> str:
    """The schema name as a quoted SQL identifier, after checking it is a plain name."""
    if not isinstance(schema, str) or not SCHEMA_NAME_RE.match(schema):
        raise ConfigurationError(
            f"PostgreSQL schema name {schema!r} is not valid: use lowercase letters, digits and "
            "'_' (at most 63 characters, not starting with a digit), e.g. ?schema=chatstate"
        )
    return f'"{schema}"'


_V1_TABLES = """
CREATE SEQUENCE {schema}.lease_token;

CREATE TABLE {schema}.sessions (
    id            text PRIMARY KEY,
    key           text NOT NULL,
    is_current    boolean NOT NULL,
    status        text NOT NULL,
    platform      text NOT NULL,
    scope         text NOT NULL,
    flow          text,
    step          text,
    created_at    float8 NOT NULL,
    last_activity float8 NOT NULL,
    warn_at       float8,
    expires_at    float8,
    purge_at      float8,
    close_reason  text,
    messages      bigint NOT NULL DEFAULT 0,
    tokens        bigint NOT NULL DEFAULT 0,
    history_count bigint NOT NULL DEFAULT 0,
    labels        jsonb NOT NULL DEFAULT '{{}}',
    version       bigint NOT NULL,
    record        jsonb NOT NULL
);
-- One current record per key; replaced sessions stay (is_current = false) until purged.
CREATE UNIQUE INDEX sessions_current_key ON {schema}.sessions (key) WHERE is_current;
-- Listing newest first with a keyset cursor (btree scans backwards).
CREATE INDEX sessions_listing ON {schema}.sessions (last_activity, id);
-- The due index: partial, so that claiming costs what is due, not what is stored.
CREATE INDEX sessions_due_warn ON {schema}.sessions (warn_at) WHERE warn_at IS NOT NULL;
CREATE INDEX sessions_due_expire ON {schema}.sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX sessions_due_purge ON {schema}.sessions (purge_at) WHERE purge_at IS NOT NULL;

CREATE TABLE {schema}.messages (
    session_id text NOT NULL,
    seq        bigint NOT NULL,
    tokens     integer NOT NULL DEFAULT 0,
    record     jsonb NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE {schema}.summaries (
    session_id text NOT NULL,
    start_seq  bigint NOT NULL,
    end_seq    bigint NOT NULL,
    record     jsonb NOT NULL,
    PRIMARY KEY (session_id, end_seq, start_seq)
);

-- Active leases only: a released lease is deleted. Fencing tokens come from one sequence, so
-- they grow per key even across releases. UNLOGGED: a lease is worth nothing after a server
-- crash (the table is emptied, every holder's commit then fails its lease check, which is
-- safe), and taking one then writes no WAL, so lease_and_load commits without a disk flush.
CREATE UNLOGGED TABLE {schema}.leases (
    key        text PRIMARY KEY,
    owner      text NOT NULL,
    token      bigint NOT NULL,
    expires_at float8 NOT NULL
);

CREATE TABLE {schema}.counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);

CREATE TABLE {schema}.quarantine (
    id     bigserial PRIMARY KEY,
    key    text NOT NULL,
    reason text NOT NULL,
    at     float8 NOT NULL,
    raw    bytea NOT NULL
);
"""

# Take the lease (free, expired, or already ours) and read the current record in one round
# trip. A function rather than one CTE statement because of snapshots: a statement reads the
# record as of its start, so when it waited for the previous holder's commit-and-release it
# would return the record *before* that commit. Inside a plpgsql function each statement takes
# a fresh snapshot (READ COMMITTED), so the SELECT sees what the previous holder committed.
_V1_LEASE_AND_LOAD = """
CREATE FUNCTION {schema}.lease_and_load(p_key text, p_owner text, p_ttl float8, p_now float8)
RETURNS TABLE (o_token bigint, o_expires_at float8, o_record jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
BEGIN
    INSERT INTO {schema}.leases AS l (key, owner, token, expires_at)
    VALUES (p_key, p_owner, nextval('{schema}.lease_token'), v_now + p_ttl)
    ON CONFLICT (key) DO UPDATE
        SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
        WHERE l.expires_at <= v_now OR l.owner = excluded.owner
    RETURNING l.token, l.expires_at INTO o_token, o_expires_at;
    IF NOT FOUND THEN
        RETURN;  -- held by another owner: no row
    END IF;
    SELECT s.record INTO o_record FROM {schema}.sessions s WHERE s.key = p_key AND s.is_current;
    RETURN NEXT;
END
$$;
"""

# Commit-and-release in one round trip: fencing check, compare-and-set on the version, the
# record's row and its due index, history changes, lease release; all in the statement's
# transaction, so it happens whole or not at all. outcome: 0 written (or written already by an
# earlier attempt of the same commit, which makes a retry after a lost answer safe), 1 lease
# lost, 2 version conflict (actual = the stored version, NULL when there is no current record).
# A concurrent first commit of the same key surfaces as a unique violation, which the store
# reports as a conflict too.
_V1_COMMIT = """
CREATE FUNCTION {schema}.commit_session(
    p_key text, p_id text, p_expected bigint, p_version bigint,
    p_status text, p_platform text, p_scope text, p_flow text, p_step text,
    p_created_at float8, p_last_activity float8,
    p_warn_at float8, p_expires_at float8, p_purge_at float8,
    p_close_reason text, p_messages bigint, p_tokens bigint, p_record jsonb,
    p_lease_token bigint, p_release boolean, p_now float8,
    p_append jsonb, p_summaries jsonb, p_drop_through bigint, p_drop_summaries boolean,
    OUT outcome integer, OUT actual bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    v_current text;
    v_same boolean;
    v_added bigint := 0;
    v_dropped bigint := 0;
BEGIN
    outcome := 0;
    -- The session row first, then the lease row: every statement that locks both does so in
    -- this order (lease_and_load, renew and release lock only the lease), so no deadlock.
    SELECT s.id, s.version INTO v_current, actual
        FROM {schema}.sessions s WHERE s.key = p_key AND s.is_current FOR UPDATE;
    IF actual = p_version AND v_current = p_id THEN
        SELECT s.record = p_record INTO v_same FROM {schema}.sessions s WHERE s.id = p_id;
        IF v_same THEN
            RETURN;  -- this very commit was applied by an earlier attempt whose answer was lost
        END IF;
    END IF;
    IF p_lease_token IS NOT NULL THEN
        PERFORM 1 FROM {schema}.leases l
            WHERE l.key = p_key AND l.token = p_lease_token AND l.expires_at > v_now
            FOR UPDATE;
        IF NOT FOUND THEN
            outcome := 1;
            RETURN;
        END IF;
    END IF;
    IF coalesce(actual, 0) <> p_expected THEN
        outcome := 2;
        RETURN;
    END IF;

    -- Drops apply to what was stored before this commit, then the new messages go in.
    IF p_drop_through IS NOT NULL THEN
        DELETE FROM {schema}.messages WHERE session_id = p_id AND seq <= p_drop_through;
        GET DIAGNOSTICS v_dropped = ROW_COUNT;
    END IF;
    IF p_append IS NOT NULL THEN
        INSERT INTO {schema}.messages (session_id, seq, tokens, record)
            SELECT p_id, (m ->> 'seq')::bigint, coalesce((m ->> 'tokens')::integer, 0), m
            FROM jsonb_array_elements(p_append) AS m;
        GET DIAGNOSTICS v_added = ROW_COUNT;
    END IF;
    IF p_drop_summaries THEN
        DELETE FROM {schema}.summaries WHERE session_id = p_id;
    END IF;
    IF p_summaries IS NOT NULL THEN
        INSERT INTO {schema}.summaries (session_id, start_seq, end_seq, record)
            SELECT p_id, (m ->> 'start_seq')::bigint, (m ->> 'end_seq')::bigint, m
            FROM jsonb_array_elements(p_summaries) AS m
        ON CONFLICT (session_id, end_seq, start_seq) DO UPDATE SET record = excluded.record;
    END IF;

    IF v_current = p_id THEN
        UPDATE {schema}.sessions SET
            status = p_status, flow = p_flow, step = p_step,
            created_at = p_created_at, last_activity = p_last_activity,
            warn_at = p_warn_at, expires_at = p_expires_at, purge_at = p_purge_at,
            close_reason = p_close_reason, messages = p_messages, tokens = p_tokens,
            history_count = history_count + v_added - v_dropped,
            labels = coalesce(p_record -> 'labels', '{{}}'::jsonb),
            version = p_version, record = p_record
        WHERE id = p_id;
    ELSE
        IF v_current IS NOT NULL THEN
            UPDATE {schema}.sessions SET is_current = false WHERE id = v_current;
        END IF;
        INSERT INTO {schema}.sessions (
            id, key, is_current, status, platform, scope, flow, step, created_at,
            last_activity, warn_at, expires_at, purge_at, close_reason, messages, tokens,
            history_count, labels, version, record)
        VALUES (
            p_id, p_key, true, p_status, p_platform, p_scope, p_flow, p_step, p_created_at,
            p_last_activity, p_warn_at, p_expires_at, p_purge_at, p_close_reason, p_messages,
            p_tokens, greatest(v_added - v_dropped, 0),
            coalesce(p_record -> 'labels', '{{}}'::jsonb), p_version, p_record);
    END IF;

    IF p_release AND p_lease_token IS NOT NULL THEN
        DELETE FROM {schema}.leases WHERE key = p_key AND token = p_lease_token;
    END IF;
END
$$;
"""

# Version 2: keyword search over history with PostgreSQL full-text search. The text of a
# message (a string, or the "text" of its content parts) is indexed with the 'simple'
# configuration (lowercased words, no stemming: chat text is multilingual). A stored generated
# column backfills existing messages while migrating and needs no change to the commit.
_V2_SEARCH = (
    """
CREATE FUNCTION {schema}.message_text(m jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(m -> 'content')
        WHEN 'string' THEN m ->> 'content'
        WHEN 'array' THEN (
            SELECT coalesce(string_agg(p ->> 'text', ' '), '')
            FROM jsonb_array_elements(m -> 'content') AS p
            WHERE jsonb_typeof(p) = 'object')
        ELSE '' END
$$;
""",
    """
ALTER TABLE {schema}.messages ADD COLUMN tsv tsvector
    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, {schema}.message_text(record))) STORED;
""",
    "CREATE INDEX messages_tsv ON {schema}.messages USING gin (tsv);",
)

# Version 3: compact history, commit marks, listing order.
#
# * History rows were about 6x the raw size of the messages: a JSONB copy of each message (JSONB
#   is larger than its JSON text), a stored tsvector column as large again, a GIN index with its
#   pending list, the 33-byte session id text in every row and in the primary key, and a token
#   count column that nothing read. Now a message is one row (sid bigint, seq bigint, body json):
#   `sid` is the session's small number (`sessions.num`), `body` the codec's compact JSON text as
#   sent (the `json` type keeps the text; JSONB would re-encode it larger), and full-text search
#   is an expression index (no stored tsvector) without a pending list (`fastupdate = off`).
# * A commit carries a random mark, stored with the row. A retried commit whose answer was lost
#   recognises that its earlier attempt was applied by that mark only: version 1 compared the
#   record's bytes, and two writers that load one version and make the same change produce
#   identical bytes, so the second "recognised" the first's write as its own and an update was
#   lost.
# * The listing order is last_activity descending, then id ascending (the store protocol's
#   order); the listing index now has that order.
_V3_TABLES = (
    """
CREATE SEQUENCE {schema}.session_num;
ALTER TABLE {schema}.sessions
    ADD COLUMN num bigint NOT NULL DEFAULT nextval('{schema}.session_num'),
    ADD COLUMN commit_mark uuid;
ALTER SEQUENCE {schema}.session_num OWNED BY {schema}.sessions.num;
""",
    """
ALTER TABLE {schema}.messages RENAME TO messages_v2;
ALTER INDEX {schema}.messages_pkey RENAME TO messages_v2_pkey;
CREATE TABLE {schema}.messages (
    sid  bigint NOT NULL,
    seq  bigint NOT NULL,
    body json NOT NULL,
    PRIMARY KEY (sid, seq)
);
INSERT INTO {schema}.messages (sid, seq, body)
    SELECT s.num, m.seq, m.record::text::json
    FROM {schema}.messages_v2 m JOIN {schema}.sessions s ON s.id = m.session_id;
DROP TABLE {schema}.messages_v2;
DROP FUNCTION {schema}.message_text(jsonb);
""",
    """
CREATE FUNCTION {schema}.message_text(m json) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE json_typeof(m -> 'content')
        WHEN 'string' THEN m ->> 'content'
        WHEN 'array' THEN (
            SELECT coalesce(string_agg(p ->> 'text', ' '), '')
            FROM json_array_elements(m -> 'content') AS p
            WHERE json_typeof(p) = 'object')
        ELSE '' END
$$;
""",
    """
CREATE INDEX messages_text ON {schema}.messages
    USING gin (to_tsvector('simple'::regconfig, {schema}.message_text(body)))
    WITH (fastupdate = off);
""",
    """
DROP INDEX {schema}.sessions_listing;
CREATE INDEX sessions_listing ON {schema}.sessions (last_activity DESC, id);
""",
    """
DROP FUNCTION {schema}.commit_session(
    text, text, bigint, bigint, text, text, text, text, text, float8, float8, float8, float8,
    float8, text, bigint, bigint, jsonb, bigint, boolean, float8, jsonb, jsonb, bigint, boolean);
""",
)

# Commit-and-release (see version 1) on the compact history table, with the commit mark.
_V3_COMMIT = """
CREATE FUNCTION {schema}.commit_session(
    p_key text, p_id text, p_expected bigint, p_version bigint,
    p_status text, p_platform text, p_scope text, p_flow text, p_step text,
    p_created_at float8, p_last_activity float8,
    p_warn_at float8, p_expires_at float8, p_purge_at float8,
    p_close_reason text, p_messages bigint, p_tokens bigint, p_record jsonb,
    p_lease_token bigint, p_release boolean, p_now float8,
    p_append json, p_summaries jsonb, p_drop_through bigint, p_drop_summaries boolean,
    p_mark uuid,
    OUT outcome integer, OUT actual bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    v_current text;
    v_num bigint;
    v_mark uuid;
    v_added bigint := 0;
    v_dropped bigint := 0;
BEGIN
    outcome := 0;
    -- The session row first, then the lease row: every statement that locks both does so in
    -- this order (lease_and_load, renew and release lock only the lease), so no deadlock.
    SELECT s.id, s.version, s.num, s.commit_mark INTO v_current, actual, v_num, v_mark
        FROM {schema}.sessions s WHERE s.key = p_key AND s.is_current FOR UPDATE;
    IF actual = p_version AND v_current = p_id AND v_mark = p_mark THEN
        RETURN;  -- this very commit was applied by an earlier attempt whose answer was lost
    END IF;
    IF p_lease_token IS NOT NULL THEN
        PERFORM 1 FROM {schema}.leases l
            WHERE l.key = p_key AND l.token = p_lease_token AND l.expires_at > v_now
            FOR UPDATE;
        IF NOT FOUND THEN
            outcome := 1;
            RETURN;
        END IF;
    END IF;
    IF coalesce(actual, 0) <> p_expected THEN
        outcome := 2;
        RETURN;
    END IF;
    IF v_current IS DISTINCT FROM p_id THEN
        v_num := nextval('{schema}.session_num');  -- a new session: its row is inserted below
    END IF;

    -- Drops apply to what was stored before this commit, then the new messages go in.
    IF p_drop_through IS NOT NULL THEN
        DELETE FROM {schema}.messages WHERE sid = v_num AND seq <= p_drop_through;
        GET DIAGNOSTICS v_dropped = ROW_COUNT;
    END IF;
    IF p_append IS NOT NULL THEN
        INSERT INTO {schema}.messages (sid, seq, body)
            SELECT v_num, (m ->> 'seq')::bigint, m FROM json_array_elements(p_append) AS m;
        GET DIAGNOSTICS v_added = ROW_COUNT;
    END IF;
    IF p_drop_summaries THEN
        DELETE FROM {schema}.summaries WHERE session_id = p_id;
    END IF;
    IF p_summaries IS NOT NULL THEN
        INSERT INTO {schema}.summaries (session_id, start_seq, end_seq, record)
            SELECT p_id, (m ->> 'start_seq')::bigint, (m ->> 'end_seq')::bigint, m
            FROM jsonb_array_elements(p_summaries) AS m
        ON CONFLICT (session_id, end_seq, start_seq) DO UPDATE SET record = excluded.record;
    END IF;

    IF v_current = p_id THEN
        UPDATE {schema}.sessions SET
            status = p_status, flow = p_flow, step = p_step,
            created_at = p_created_at, last_activity = p_last_activity,
            warn_at = p_warn_at, expires_at = p_expires_at, purge_at = p_purge_at,
            close_reason = p_close_reason, messages = p_messages, tokens = p_tokens,
            history_count = history_count + v_added - v_dropped,
            labels = coalesce(p_record -> 'labels', '{{}}'::jsonb),
            version = p_version, record = p_record, commit_mark = p_mark
        WHERE id = p_id;
    ELSE
        IF v_current IS NOT NULL THEN
            UPDATE {schema}.sessions SET is_current = false WHERE id = v_current;
        END IF;
        INSERT INTO {schema}.sessions (
            id, key, is_current, status, platform, scope, flow, step, created_at,
            last_activity, warn_at, expires_at, purge_at, close_reason, messages, tokens,
            history_count, labels, version, record, num, commit_mark)
        VALUES (
            p_id, p_key, true, p_status, p_platform, p_scope, p_flow, p_step, p_created_at,
            p_last_activity, p_warn_at, p_expires_at, p_purge_at, p_close_reason, p_messages,
            p_tokens, greatest(v_added - v_dropped, 0),
            coalesce(p_record -> 'labels', '{{}}'::jsonb), p_version, p_record, v_num, p_mark);
    END IF;

    IF p_release AND p_lease_token IS NOT NULL THEN
        DELETE FROM {schema}.leases WHERE key = p_key AND token = p_lease_token;
    END IF;
END
$$;
"""

# Version 4: cheaper round trips (profiled with auto_explain and pg_stat_statements: the v3
# commit spent ~160 us of server time against ~40 us for a raw SELECT + UPSERT).
#
# * commit_session tries a fast path first: one UPDATE of the current row guarded by the id,
#   the expected version and (in the same WHERE) the lease, then the history rows and the lease
#   release. No SELECT ... FOR UPDATE before it (which also wrote a heap LOCK WAL record), no
#   separate lease lock statement. Anything else (a new session, a conflict, a lost lease, a
#   retried commit, drops) finds no row there, has written nothing, and takes the version 3
#   path unchanged. Lock order stays session row, then lease row.
#   An expired lease taken over between the guard and the end of the commit cannot lose an
#   update: the taker loaded the version this commit replaces, so its own commit conflicts.
# * lease_and_load returns exactly one row (o_token NULL when another owner holds the lease)
#   through OUT parameters instead of a set-returning RETURN NEXT.
_V4_LEASE_AND_LOAD = (
    "DROP FUNCTION {schema}.lease_and_load(text, text, float8, float8);",
    """
CREATE FUNCTION {schema}.lease_and_load(p_key text, p_owner text, p_ttl float8, p_now float8,
    OUT o_token bigint, OUT o_expires_at float8, OUT o_record jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
BEGIN
    INSERT INTO {schema}.leases AS l (key, owner, token, expires_at)
    VALUES (p_key, p_owner, nextval('{schema}.lease_token'), v_now + p_ttl)
    ON CONFLICT (key) DO UPDATE
        SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
        WHERE l.expires_at <= v_now OR l.owner = excluded.owner
    RETURNING l.token, l.expires_at INTO o_token, o_expires_at;
    IF FOUND THEN
        -- A statement of its own: a fresh snapshot sees what the previous holder committed.
        SELECT s.record INTO o_record FROM {schema}.sessions s
            WHERE s.key = p_key AND s.is_current;
    END IF;
END
$$;
""",
)

_V4_COMMIT = """
CREATE OR REPLACE FUNCTION {schema}.commit_session(
    p_key text, p_id text, p_expected bigint, p_version bigint,
    p_status text, p_platform text, p_scope text, p_flow text, p_step text,
    p_created_at float8, p_last_activity float8,
    p_warn_at float8, p_expires_at float8, p_purge_at float8,
    p_close_reason text, p_messages bigint, p_tokens bigint, p_record jsonb,
    p_lease_token bigint, p_release boolean, p_now float8,
    p_append json, p_summaries jsonb, p_drop_through bigint, p_drop_summaries boolean,
    p_mark uuid,
    OUT outcome integer, OUT actual bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    v_current text;
    v_num bigint;
    v_mark uuid;
    v_added bigint := 0;
    v_dropped bigint := 0;
BEGIN
    outcome := 0;

    -- The fast path: the lease holder updates the current session and appends history.
    IF p_drop_through IS NULL AND NOT p_drop_summaries THEN
        UPDATE {schema}.sessions SET
            status = p_status, flow = p_flow, step = p_step,
            created_at = p_created_at, last_activity = p_last_activity,
            warn_at = p_warn_at, expires_at = p_expires_at, purge_at = p_purge_at,
            close_reason = p_close_reason, messages = p_messages, tokens = p_tokens,
            history_count = history_count + coalesce(json_array_length(p_append), 0),
            labels = coalesce(p_record -> 'labels', '{{}}'::jsonb),
            version = p_version, record = p_record, commit_mark = p_mark
        WHERE key = p_key AND is_current AND id = p_id AND version = p_expected
            AND (p_lease_token IS NULL OR EXISTS (
                SELECT FROM {schema}.leases l
                WHERE l.key = p_key AND l.token = p_lease_token AND l.expires_at > v_now))
        RETURNING num INTO v_num;
        IF FOUND THEN
            IF p_append IS NOT NULL THEN
                INSERT INTO {schema}.messages (sid, seq, body)
                    SELECT v_num, (m ->> 'seq')::bigint, m
                    FROM json_array_elements(p_append) AS m;
            END IF;
            IF p_summaries IS NOT NULL THEN
                INSERT INTO {schema}.summaries (session_id, start_seq, end_seq, record)
                    SELECT p_id, (m ->> 'start_seq')::bigint, (m ->> 'end_seq')::bigint, m
                    FROM jsonb_array_elements(p_summaries) AS m
                ON CONFLICT (session_id, end_seq, start_seq) DO UPDATE
                    SET record = excluded.record;
            END IF;
            IF p_release AND p_lease_token IS NOT NULL THEN
                DELETE FROM {schema}.leases WHERE key = p_key AND token = p_lease_token;
            END IF;
            RETURN;
        END IF;
    END IF;

    -- Everything else, as in version 3 (nothing was written above).
    SELECT s.id, s.version, s.num, s.commit_mark INTO v_current, actual, v_num, v_mark
        FROM {schema}.sessions s WHERE s.key = p_key AND s.is_current FOR UPDATE;
    IF actual = p_version AND v_current = p_id AND v_mark = p_mark THEN
        RETURN;  -- this very commit was applied by an earlier attempt whose answer was lost
    END IF;
    IF p_lease_token IS NOT NULL THEN
        PERFORM 1 FROM {schema}.leases l
            WHERE l.key = p_key AND l.token = p_lease_token AND l.expires_at > v_now
            FOR UPDATE;
        IF NOT FOUND THEN
            outcome := 1;
            RETURN;
        END IF;
    END IF;
    IF coalesce(actual, 0) <> p_expected THEN
        outcome := 2;
        RETURN;
    END IF;
    IF v_current IS DISTINCT FROM p_id THEN
        v_num := nextval('{schema}.session_num');  -- a new session: its row is inserted below
    END IF;

    -- Drops apply to what was stored before this commit, then the new messages go in.
    IF p_drop_through IS NOT NULL THEN
        DELETE FROM {schema}.messages WHERE sid = v_num AND seq <= p_drop_through;
        GET DIAGNOSTICS v_dropped = ROW_COUNT;
    END IF;
    IF p_append IS NOT NULL THEN
        INSERT INTO {schema}.messages (sid, seq, body)
            SELECT v_num, (m ->> 'seq')::bigint, m FROM json_array_elements(p_append) AS m;
        GET DIAGNOSTICS v_added = ROW_COUNT;
    END IF;
    IF p_drop_summaries THEN
        DELETE FROM {schema}.summaries WHERE session_id = p_id;
    END IF;
    IF p_summaries IS NOT NULL THEN
        INSERT INTO {schema}.summaries (session_id, start_seq, end_seq, record)
            SELECT p_id, (m ->> 'start_seq')::bigint, (m ->> 'end_seq')::bigint, m
            FROM jsonb_array_elements(p_summaries) AS m
        ON CONFLICT (session_id, end_seq, start_seq) DO UPDATE SET record = excluded.record;
    END IF;

    IF v_current = p_id THEN
        UPDATE {schema}.sessions SET
            status = p_status, flow = p_flow, step = p_step,
            created_at = p_created_at, last_activity = p_last_activity,
            warn_at = p_warn_at, expires_at = p_expires_at, purge_at = p_purge_at,
            close_reason = p_close_reason, messages = p_messages, tokens = p_tokens,
            history_count = history_count + v_added - v_dropped,
            labels = coalesce(p_record -> 'labels', '{{}}'::jsonb),
            version = p_version, record = p_record, commit_mark = p_mark
        WHERE id = p_id;
    ELSE
        IF v_current IS NOT NULL THEN
            UPDATE {schema}.sessions SET is_current = false WHERE id = v_current;
        END IF;
        INSERT INTO {schema}.sessions (
            id, key, is_current, status, platform, scope, flow, step, created_at,
            last_activity, warn_at, expires_at, purge_at, close_reason, messages, tokens,
            history_count, labels, version, record, num, commit_mark)
        VALUES (
            p_id, p_key, true, p_status, p_platform, p_scope, p_flow, p_step, p_created_at,
            p_last_activity, p_warn_at, p_expires_at, p_purge_at, p_close_reason, p_messages,
            p_tokens, greatest(v_added - v_dropped, 0),
            coalesce(p_record -> 'labels', '{{}}'::jsonb), p_version, p_record, v_num, p_mark);
    END IF;

    IF p_release AND p_lease_token IS NOT NULL THEN
        DELETE FROM {schema}.leases WHERE key = p_key AND token = p_lease_token;
    END IF;
END
$$;
"""

# Version 5: lease_and_load as a procedure that commits the lease before reading the record.
#
# Traced on a private server (strace -k of the backend): an update cost two WAL flushes, not
# one. Reading the record in lease_and_load visits its heap page, and that visit often prunes
# the row versions the previous commits left (heap_page_prune_opt writes WAL). The lease write
# gave the transaction an xid, and a transaction with an xid that wrote WAL commits with a
# flush: the lease, meant to be free (UNLOGGED), paid an fdatasync most of the time. The raw
# SELECT + UPSERT loop does not: its SELECT has no xid, so its pruning commits without a flush.
# Now the procedure takes the lease, COMMITs (nothing logged: no flush), then reads the record
# in a new transaction that writes nothing but pruning (no xid: no flush), and that read takes
# a fresh snapshot, which sees what the previous holder committed (why it was a function).
_V5_LEASE_AND_LOAD = (
    "DROP FUNCTION {schema}.lease_and_load(text, text, float8, float8);",
    """
CREATE PROCEDURE {schema}.lease_and_load(p_key text, p_owner text, p_ttl float8, p_now float8,
    INOUT o_token bigint DEFAULT NULL, INOUT o_expires_at float8 DEFAULT NULL,
    INOUT o_record jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
BEGIN
    INSERT INTO {schema}.leases AS l (key, owner, token, expires_at)
    VALUES (p_key, p_owner, nextval('{schema}.lease_token'), v_now + p_ttl)
    ON CONFLICT (key) DO UPDATE
        SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
        WHERE l.expires_at <= v_now OR l.owner = excluded.owner
    RETURNING l.token, l.expires_at INTO o_token, o_expires_at;
    IF o_token IS NOT NULL THEN
        COMMIT;
        SELECT s.record INTO o_record FROM {schema}.sessions s
            WHERE s.key = p_key AND s.is_current;
    END IF;
END
$$;
""",
)

# Version 6: commits that are HOT updates.
#
# Every commit changes last_activity and usually expires_at (the idle deadline slides), and
# both were indexed (listing, due index): so every commit was a non-HOT update that inserted a
# new entry into all six indexes of `sessions` (four btree WAL records per update, and index
# bloat until a vacuum). Now the listing and due indexes hold minute buckets of those times
# (stored generated columns), which change once a minute per session at most; the precise
# times stay in their columns and are filtered and sorted on there (an incremental sort within
# the bucket: the order is unchanged, last_activity desc then id). A commit whose buckets did
# not change touches no index, and FILLFACTOR 70 leaves room on the page for the new version.
# `TIME_BUCKET_SECONDS` in this module is the bucket width the store's queries assume.
_V6_BUCKETS = (
    "ALTER TABLE {schema}.sessions SET (fillfactor = 70);",
    """
ALTER TABLE {schema}.sessions
    ADD COLUMN activity_bucket bigint
        GENERATED ALWAYS AS (floor(last_activity / 60)::bigint) STORED,
    ADD COLUMN warn_bucket bigint GENERATED ALWAYS AS (floor(warn_at / 60)::bigint) STORED,
    ADD COLUMN expire_bucket bigint GENERATED ALWAYS AS (floor(expires_at / 60)::bigint) STORED,
    ADD COLUMN purge_bucket bigint GENERATED ALWAYS AS (floor(purge_at / 60)::bigint) STORED;
""",
    """
DROP INDEX {schema}.sessions_listing;
DROP INDEX {schema}.sessions_due_warn;
DROP INDEX {schema}.sessions_due_expire;
DROP INDEX {schema}.sessions_due_purge;
CREATE INDEX sessions_listing ON {schema}.sessions (activity_bucket DESC);
CREATE INDEX sessions_due_warn ON {schema}.sessions (warn_bucket) WHERE warn_bucket IS NOT NULL;
CREATE INDEX sessions_due_expire ON {schema}.sessions (expire_bucket)
    WHERE expire_bucket IS NOT NULL;
CREATE INDEX sessions_due_purge ON {schema}.sessions (purge_bucket)
    WHERE purge_bucket IS NOT NULL;
""",
)
TIME_BUCKET_SECONDS = 60

# Version 7: the full-text index takes new messages through its pending list again.
#
# Profiled on the agent workload (pg_stat_statements, nested): with fastupdate off, inserting a
# turn's messages cost ~480 us of the commit's ~660, nearly all of it inserting every word of
# every message into the GIN index one by one. With a pending list the words are appended and
# merged into the index in sorted batches when the list passes gin_pending_list_limit. A small
# limit (128 kB) bounds what the list adds to storage and to a search's sequential part, and
# makes each merge a short one.
_V7_SEARCH = (
    "ALTER INDEX {schema}.messages_text SET (fastupdate = on, gin_pending_list_limit = 128);",
)

# Version 8: a released lease keeps its row (expires_at = 0) instead of being deleted.
#
# Deleting the row on every release and inserting it again on the next lease_and_load put a new
# heap tuple and a new btree entry into `leases` per update, and the dead ones piled up (about
# 0.06x the raw message size of the agent benchmark, run without autovacuum). Now lease_and_load
# takes the existing row with its ON CONFLICT update and a release sets expires_at to 0 (free to
# anyone; renew and the commit's lease check need expires_at > now): two HOT updates of one row
# per key, with FILLFACTOR room for them. Deleting a session deletes its key's released row.
_V4_RELEASE = "DELETE FROM {schema}.leases WHERE key = p_key AND token = p_lease_token;"
_V8_RELEASE = (
    "UPDATE {schema}.leases SET expires_at = 0 WHERE key = p_key AND token = p_lease_token;"
)
assert _V4_COMMIT.count(_V4_RELEASE) == 2
_V8_COMMIT = _V4_COMMIT.replace(_V4_RELEASE, _V8_RELEASE)
_V8_LEASES = ("ALTER TABLE {schema}.leases SET (fillfactor = 70);", _V8_COMMIT)

# Version 9: the fast path checks the lease in a statement of its own.
#
# Measured by the backend's CPU time per call (/proc, synchronous_commit off, 3 x 2,000 calls):
# the lease guard inside the UPDATE's WHERE, `(p_lease_token IS NULL OR EXISTS (...))`, cost
# about 55 us per commit even when there was no lease to check (240 -> 180 us per call without
# it), more than the UPDATE itself. A PERFORM on the leases primary key before the UPDATE, and
# a boolean in its WHERE, checks the same thing (still no row lock: see version 4).
_V9_GUARD_OLD = """            AND (p_lease_token IS NULL OR EXISTS (
                SELECT FROM {schema}.leases l
                WHERE l.key = p_key AND l.token = p_lease_token AND l.expires_at > v_now))"""
_V9_GUARD_NEW = "            AND v_lease_ok"
_V9_DECLARE_OLD = "    v_dropped bigint := 0;\nBEGIN\n    outcome := 0;\n"
_V9_DECLARE_NEW = """    v_dropped bigint := 0;
    v_lease_ok boolean := true;
BEGIN
    outcome := 0;
    IF p_lease_token IS NOT NULL THEN
        PERFORM FROM {schema}.leases l
            WHERE l.key = p_key AND l.token = p_lease_token AND l.expires_at > v_now;
        v_lease_ok := FOUND;
    END IF;
"""
assert _V8_COMMIT.count(_V9_GUARD_OLD) == 1 and _V8_COMMIT.count(_V9_DECLARE_OLD) == 1
_V9_COMMIT = _V8_COMMIT.replace(_V9_GUARD_OLD, _V9_GUARD_NEW).replace(
    _V9_DECLARE_OLD, _V9_DECLARE_NEW)

# Version 10: history as one row per commit (of at most `HISTORY_ROW_MESSAGES` messages), its
# text apart from the rest.
#
# Measured on the agent workload (500 turns of 2-4 messages): a message row cost about 1.8x
# the raw size of the message (a JSON object with every field name, plus some 50 bytes of tuple
# header, line pointer, sid and seq per message, plus a primary-key entry), and the history
# came to about 2.4x the raw size with its indexes. Now a commit's messages are one row of
# `history` keyed by (sid, seq of its newest message):
#
# * `txt` holds the text content of its messages, each followed by a newline: the full-text
#   index is on this column, so a search parses no JSON, and the text is stored once;
# * `body` is a msgpack array of pairs (k, message) where message is `Codec.pack_message`'s
#   positional form with the content left out when k >= 0 (the content is then the next k
#   characters of `txt`); k < 0 keeps the content in the message (structured parts, encrypted
#   history, text PostgreSQL cannot hold) and -1 - k characters of `txt` are its searchable text;
#   a body that starts with a zero byte is that array deflated with the store's preset
#   dictionary (`postgres._BODY_ZDICT`: the recurring field names of packed messages);
# * `n` is the number of messages in the row (the maintained count, read_tail's bound).
#
# A read of the tail or a range takes the rows that overlap it (the row after a range's end may
# hold its last messages) and the store keeps the messages inside it. A drop that ends inside a
# row rewrites that row with its newer messages, which the store reads and re-encodes before the
# commit (the version check makes that read current). Messages written before this migration
# keep their JSON form as one-message rows (`body` starts with '{', `txt` is its search text).
HISTORY_ROW_MESSAGES = 64
_V10_HISTORY = (
    """
CREATE TABLE {schema}.history (
    sid  bigint NOT NULL,
    seq  bigint NOT NULL,
    n    integer NOT NULL,
    body bytea NOT NULL,
    txt  text NOT NULL,
    PRIMARY KEY (sid, seq)
);
INSERT INTO {schema}.history (sid, seq, n, body, txt)
    SELECT sid, seq, 1, convert_to(body::text, 'UTF8'),
           coalesce({schema}.message_text(body), '')
    FROM {schema}.messages;
DROP TABLE {schema}.messages;
DROP FUNCTION {schema}.message_text(json);
""",
    """
CREATE INDEX history_text ON {schema}.history
    USING gin (to_tsvector('simple'::regconfig, txt))
    WITH (fastupdate = on, gin_pending_list_limit = 128);
""",
    """
DROP FUNCTION {schema}.commit_session(
    text, text, bigint, bigint, text, text, text, text, text, float8, float8, float8, float8,
    float8, text, bigint, bigint, jsonb, bigint, boolean, float8, json, jsonb, bigint, boolean,
    uuid);
""",
)
_V10_REPLACEMENTS = (
    ("    p_append json, p_summaries jsonb, p_drop_through bigint, p_drop_summaries boolean,\n"
     "    p_mark uuid,\n",
     "    p_hist_seqs bigint[], p_hist_ns integer[], p_hist_bodies bytea[], p_hist_txts text[],\n"
     "    p_added bigint, p_summaries jsonb, p_drop_through bigint, p_drop_summaries boolean,\n"
     "    p_mark uuid, p_split_seq bigint, p_split_n integer, p_split_body bytea,\n"
     "    p_split_txt text,\n"),
    ("CREATE OR REPLACE FUNCTION", "CREATE FUNCTION"),
    ("    v_lease_ok boolean := true;\n",
     "    v_lease_ok boolean := true;\n    v_split integer;\n"),
    ("history_count + coalesce(json_array_length(p_append), 0)", "history_count + p_added"),
    ("""            IF p_append IS NOT NULL THEN
                INSERT INTO {schema}.messages (sid, seq, body)
                    SELECT v_num, (m ->> 'seq')::bigint, m
                    FROM json_array_elements(p_append) AS m;
            END IF;
""", """            IF p_hist_seqs IS NOT NULL THEN
                INSERT INTO {schema}.history (sid, seq, n, body, txt)
                    SELECT v_num, h.seq, h.n, h.body, h.txt
                    FROM unnest(p_hist_seqs, p_hist_ns, p_hist_bodies, p_hist_txts)
                        AS h(seq, n, body, txt);
            END IF;
"""),
    ("""    IF v_current IS DISTINCT FROM p_id THEN
        v_num := nextval('{schema}.session_num');  -- a new session: its row is inserted below
    END IF;
""", """    IF v_current IS DISTINCT FROM p_id THEN
        v_num := nextval('{schema}.session_num');  -- a new session: its row is inserted below
    END IF;
    IF p_drop_through IS NOT NULL AND p_split_seq IS NOT NULL THEN
        -- The row holding the newest dropped messages: the store read it and sends its newer
        -- messages. Gone meanwhile: history changed under a version the check above accepted.
        SELECT h.n INTO v_split FROM {schema}.history h
            WHERE h.sid = v_num AND h.seq = p_split_seq FOR UPDATE;
        IF NOT FOUND THEN
            outcome := 2;
            RETURN;
        END IF;
    END IF;
"""),
    ("""        DELETE FROM {schema}.messages WHERE sid = v_num AND seq <= p_drop_through;
        GET DIAGNOSTICS v_dropped = ROW_COUNT;
""", """        WITH d AS (DELETE FROM {schema}.history WHERE sid = v_num AND seq <= p_drop_through
                   RETURNING n)
        SELECT coalesce(sum(d.n), 0) INTO v_dropped FROM d;
        IF p_split_seq IS NOT NULL THEN
            UPDATE {schema}.history SET n = p_split_n, body = p_split_body, txt = p_split_txt
                WHERE sid = v_num AND seq = p_split_seq;
            v_dropped := v_dropped + v_split - p_split_n;
        END IF;
"""),
    ("""    IF p_append IS NOT NULL THEN
        INSERT INTO {schema}.messages (sid, seq, body)
            SELECT v_num, (m ->> 'seq')::bigint, m FROM json_array_elements(p_append) AS m;
        GET DIAGNOSTICS v_added = ROW_COUNT;
    END IF;
""", """    IF p_hist_seqs IS NOT NULL THEN
        INSERT INTO {schema}.history (sid, seq, n, body, txt)
            SELECT v_num, h.seq, h.n, h.body, h.txt
            FROM unnest(p_hist_seqs, p_hist_ns, p_hist_bodies, p_hist_txts) AS h(seq, n, body, txt);
        v_added := p_added;
    END IF;
"""),
)
_V10_COMMIT = _V9_COMMIT
for _old, _new in _V10_REPLACEMENTS:
    assert _V10_COMMIT.count(_old) == 1, _old
    _V10_COMMIT = _V10_COMMIT.replace(_old, _new)
assert "messages (sid" not in _V10_COMMIT and "p_append" not in _V10_COMMIT

# Version 11: the full-text index on history rows without a pending list.
#
# Without vacuum (the agent workload runs with autovacuum off) the pages of a flushed pending
# list are not reused, and the index grew to 0.24x the raw size of the messages; inserting each
# row's words directly keeps it at 0.17x. With one row per commit (version 10) that costs one
# index insertion of the commit's distinct words, not one per message (version 7's reason).
_V11_SEARCH = (
    "ALTER INDEX {schema}.history_text SET (fastupdate = off);",
    "SELECT gin_clean_pending_list('{schema}.history_text'::regclass);",
)

# Version 12: cheaper statements on the update path (perf of the backends under the sessions
# benchmark: executor start-up was an eighth of the server's time per update).
#
# * The minute buckets (version 6) are plain columns that the writers set, no longer stored
#   generated columns: PostgreSQL 15 rebuilds the expression of every generated column (parsing
#   its stored node tree) each time an UPDATE of the table starts, about 5% of the server's time
#   per update. Same values, same indexes, still HOT (an unchanged bucket is no index change).
# * lease_and_load updates the key's lease row and inserts one only when there is none, instead
#   of INSERT ... ON CONFLICT DO UPDATE (a speculative insertion check and an explicit tuple lock
#   before the update, on a row that exists for every key seen before).
_V12_BUCKETS = """
ALTER TABLE {schema}.sessions
    ADD COLUMN activity_min bigint, ADD COLUMN warn_min bigint,
    ADD COLUMN expire_min bigint, ADD COLUMN purge_min bigint;
UPDATE {schema}.sessions SET activity_min = activity_bucket, warn_min = warn_bucket,
    expire_min = expire_bucket, purge_min = purge_bucket;
ALTER TABLE {schema}.sessions
    DROP COLUMN activity_bucket, DROP COLUMN warn_bucket,
    DROP COLUMN expire_bucket, DROP COLUMN purge_bucket;
ALTER TABLE {schema}.sessions RENAME COLUMN activity_min TO activity_bucket;
ALTER TABLE {schema}.sessions RENAME COLUMN warn_min TO warn_bucket;
ALTER TABLE {schema}.sessions RENAME COLUMN expire_min TO expire_bucket;
ALTER TABLE {schema}.sessions RENAME COLUMN purge_min TO purge_bucket;
CREATE INDEX sessions_listing ON {schema}.sessions (activity_bucket DESC);
CREATE INDEX sessions_due_warn ON {schema}.sessions (warn_bucket) WHERE warn_bucket IS NOT NULL;
CREATE INDEX sessions_due_expire ON {schema}.sessions (expire_bucket)
    WHERE expire_bucket IS NOT NULL;
CREATE INDEX sessions_due_purge ON {schema}.sessions (purge_bucket)
    WHERE purge_bucket IS NOT NULL;
"""
_V12_SET_BUCKETS = (
    "activity_bucket = floor(p_last_activity / 60)::bigint,\n"
    "            warn_bucket = floor(p_warn_at / 60)::bigint,\n"
    "            expire_bucket = floor(p_expires_at / 60)::bigint,\n"
    "            purge_bucket = floor(p_purge_at / 60)::bigint,\n"
    "            version = p_version, record = p_record, commit_mark = p_mark\n")
_V12_REPLACEMENTS = (
    ("CREATE FUNCTION {schema}.commit_session(",
     "CREATE OR REPLACE FUNCTION {schema}.commit_session("),
    ("version = p_version, record = p_record, commit_mark = p_mark\n", _V12_SET_BUCKETS),
    ("            history_count, labels, version, record, num, commit_mark)\n",
     "            history_count, labels, version, record, num, commit_mark,\n"
     "            activity_bucket, warn_bucket, expire_bucket, purge_bucket)\n"),
    ("coalesce(p_record -> 'labels', '{{}}'::jsonb), p_version, p_record, v_num, p_mark);\n",
     "coalesce(p_record -> 'labels', '{{}}'::jsonb), p_version, p_record, v_num, p_mark,\n"
     "            floor(p_last_activity / 60)::bigint, floor(p_warn_at / 60)::bigint,\n"
     "            floor(p_expires_at / 60)::bigint, floor(p_purge_at / 60)::bigint);\n"),
)
_V12_COMMIT = _V10_COMMIT
for _old, _new in _V12_REPLACEMENTS:
    _count = 2 if _old.startswith("version = p_version") else 1
    assert _V12_COMMIT.count(_old) == _count, _old
    _V12_COMMIT = _V12_COMMIT.replace(_old, _new)
_V12_LEASE_AND_LOAD = """
CREATE OR REPLACE PROCEDURE {schema}.lease_and_load(p_key text, p_owner text, p_ttl float8,
    p_now float8, INOUT o_token bigint DEFAULT NULL, INOUT o_expires_at float8 DEFAULT NULL,
    INOUT o_record jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
BEGIN
    UPDATE {schema}.leases SET owner = p_owner, token = nextval('{schema}.lease_token'),
            expires_at = v_now + p_ttl
        WHERE key = p_key AND (expires_at <= v_now OR owner = p_owner)
        RETURNING token, expires_at INTO o_token, o_expires_at;
    IF NOT FOUND THEN
        -- No row for the key yet, or held by another owner (then this inserts nothing).
        INSERT INTO {schema}.leases AS l (key, owner, token, expires_at)
        VALUES (p_key, p_owner, nextval('{schema}.lease_token'), v_now + p_ttl)
        ON CONFLICT (key) DO UPDATE
            SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
            WHERE l.expires_at <= v_now OR l.owner = excluded.owner
        RETURNING l.token, l.expires_at INTO o_token, o_expires_at;
    END IF;
    IF o_token IS NOT NULL THEN
        COMMIT;
        SELECT s.record INTO o_record FROM {schema}.sessions s
            WHERE s.key = p_key AND s.is_current;
    END IF;
END
$$;
"""

# Version 13: an update in two single-statement transactions (lease-and-load, commit).
#
# Measured with the sessions benchmark: an update cost three transactions and about seven
# statements of plpgsql (the procedure's lease write and COMMIT, its read, the commit function's
# lease check, session update and lease release), about 400 us of server time against 170 us
# for a raw SELECT + UPSERT. Now:
#
# * The store's lease-and-load is one plain statement: an UPDATE of the key's lease row (a CTE)
#   and the current record beside it, with `synchronous_commit` off for that transaction only
#   (a lost lease is harmless: the table is UNLOGGED, and any later commit flushes the WAL
#   before it, the lease sequence's included). Keys with no lease row yet take an INSERT ... ON
#   CONFLICT statement instead.
# * A commit releases its lease *implicitly*: it stores the lease's token in the session row
#   (`released_token`) in the same UPDATE, and a lease whose token is its current session's
#   released_token is free. So the commit writes one row and locks no lease row, and a
#   lease-and-load never waits for a commit: one statement's snapshot sees the release and the
#   record it released together (with a lock wait it would re-check the lease row but read the
#   record as of before the wait). A lease that was released is also refused by renew and by
#   commit. An explicit release (no commit) still sets expires_at to 0.
# * The usual commit is one plain UPDATE of the current row guarded by id, version, the lease's
#   token and expiry (and not released), with the history rows in a CTE (the store's SQL); when
#   it finds no row the store calls `commit_session` (below), the general path.
# * `commit_session` is that general path only (new sessions, replaced sessions, conflicts, lost
#   leases, retried commits, drops and summaries). It checks the lease without locking its row:
#   as in version 4, a writer whose expired lease is taken meanwhile cannot lose an update, the
#   taker's commit conflicts on the version.
_V13_RELEASED = (
    "ALTER TABLE {schema}.sessions ADD COLUMN released_token bigint;",
    "DROP PROCEDURE {schema}.lease_and_load(text, text, float8, float8, bigint, float8, jsonb);",
)
_V13_COMMIT = """
CREATE OR REPLACE FUNCTION {schema}.commit_session(
    p_key text, p_id text, p_expected bigint, p_version bigint,
    p_status text, p_platform text, p_scope text, p_flow text, p_step text,
    p_created_at float8, p_last_activity float8,
    p_warn_at float8, p_expires_at float8, p_purge_at float8,
    p_close_reason text, p_messages bigint, p_tokens bigint, p_record jsonb,
    p_lease_token bigint, p_release boolean, p_now float8,
    p_hist_seqs bigint[], p_hist_ns integer[], p_hist_bodies bytea[], p_hist_txts text[],
    p_added bigint, p_summaries jsonb, p_drop_through bigint, p_drop_summaries boolean,
    p_mark uuid, p_split_seq bigint, p_split_n integer, p_split_body bytea,
    p_split_txt text,
    OUT outcome integer, OUT actual bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    v_current text;
    v_num bigint;
    v_mark uuid;
    v_released bigint;
    v_added bigint := 0;
    v_dropped bigint := 0;
    v_split integer;
BEGIN
    outcome := 0;
    SELECT s.id, s.version, s.num, s.commit_mark, s.released_token
        INTO v_current, actual, v_num, v_mark, v_released
        FROM {schema}.sessions s WHERE s.key = p_key AND s.is_current FOR UPDATE;
    IF actual = p_version AND v_current = p_id AND v_mark = p_mark THEN
        RETURN;  -- this very commit was applied by an earlier attempt whose answer was lost
    END IF;
    IF p_lease_token IS NOT NULL THEN
        -- Held: the token is the lease row's, unexpired, and no commit released it.
        PERFORM FROM {schema}.leases l
            WHERE l.key = p_key AND l.token = p_lease_token AND l.expires_at > v_now;
        IF NOT FOUND OR v_released = p_lease_token THEN
            outcome := 1;
            RETURN;
        END IF;
    END IF;
    IF coalesce(actual, 0) <> p_expected THEN
        outcome := 2;
        RETURN;
    END IF;
    IF v_current IS DISTINCT FROM p_id THEN
        v_num := nextval('{schema}.session_num');  -- a new session: its row is inserted below
    END IF;
    IF p_drop_through IS NOT NULL AND p_split_seq IS NOT NULL THEN
        -- The row holding the newest dropped messages: the store read it and sends its newer
        -- messages. Gone meanwhile: history changed under a version the check above accepted.
        SELECT h.n INTO v_split FROM {schema}.history h
            WHERE h.sid = v_num AND h.seq = p_split_seq FOR UPDATE;
        IF NOT FOUND THEN
            outcome := 2;
            RETURN;
        END IF;
    END IF;

    -- Drops apply to what was stored before this commit, then the new messages go in.
    IF p_drop_through IS NOT NULL THEN
        WITH d AS (DELETE FROM {schema}.history WHERE sid = v_num AND seq <= p_drop_through
                   RETURNING n)
        SELECT coalesce(sum(d.n), 0) INTO v_dropped FROM d;
        IF p_split_seq IS NOT NULL THEN
            UPDATE {schema}.history SET n = p_split_n, body = p_split_body, txt = p_split_txt
                WHERE sid = v_num AND seq = p_split_seq;
            v_dropped := v_dropped + v_split - p_split_n;
        END IF;
    END IF;
    IF p_hist_seqs IS NOT NULL THEN
        INSERT INTO {schema}.history (sid, seq, n, body, txt)
            SELECT v_num, h.seq, h.n, h.body, h.txt
            FROM unnest(p_hist_seqs, p_hist_ns, p_hist_bodies, p_hist_txts) AS h(seq, n, body, txt);
        v_added := p_added;
    END IF;
    IF p_drop_summaries THEN
        DELETE FROM {schema}.summaries WHERE session_id = p_id;
    END IF;
    IF p_summaries IS NOT NULL THEN
        INSERT INTO {schema}.summaries (session_id, start_seq, end_seq, record)
            SELECT p_id, (m ->> 'start_seq')::bigint, (m ->> 'end_seq')::bigint, m
            FROM jsonb_array_elements(p_summaries) AS m
        ON CONFLICT (session_id, end_seq, start_seq) DO UPDATE SET record = excluded.record;
    END IF;

    IF v_current = p_id THEN
        UPDATE {schema}.sessions SET
            status = p_status, flow = p_flow, step = p_step,
            created_at = p_created_at, last_activity = p_last_activity,
            warn_at = p_warn_at, expires_at = p_expires_at, purge_at = p_purge_at,
            close_reason = p_close_reason, messages = p_messages, tokens = p_tokens,
            history_count = history_count + v_added - v_dropped,
            labels = coalesce(p_record -> 'labels', '{{}}'::jsonb),
            activity_bucket = floor(p_last_activity / 60)::bigint,
            warn_bucket = floor(p_warn_at / 60)::bigint,
            expire_bucket = floor(p_expires_at / 60)::bigint,
            purge_bucket = floor(p_purge_at / 60)::bigint,
            version = p_version, record = p_record, commit_mark = p_mark,
            released_token = CASE WHEN p_release THEN p_lease_token ELSE released_token END
        WHERE id = p_id;
    ELSE
        IF v_current IS NOT NULL THEN
            UPDATE {schema}.sessions SET is_current = false WHERE id = v_current;
        END IF;
        INSERT INTO {schema}.sessions (
            id, key, is_current, status, platform, scope, flow, step, created_at,
            last_activity, warn_at, expires_at, purge_at, close_reason, messages, tokens,
            history_count, labels, version, record, num, commit_mark,
            activity_bucket, warn_bucket, expire_bucket, purge_bucket, released_token)
        VALUES (
            p_id, p_key, true, p_status, p_platform, p_scope, p_flow, p_step, p_created_at,
            p_last_activity, p_warn_at, p_expires_at, p_purge_at, p_close_reason, p_messages,
            p_tokens, greatest(v_added - v_dropped, 0),
            coalesce(p_record -> 'labels', '{{}}'::jsonb), p_version, p_record, v_num, p_mark,
            floor(p_last_activity / 60)::bigint, floor(p_warn_at / 60)::bigint,
            floor(p_expires_at / 60)::bigint, floor(p_purge_at / 60)::bigint,
            CASE WHEN p_release THEN p_lease_token END);
    END IF;
END
$$;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sessions, history, summaries, leases, counters, quarantine",
              (_V1_TABLES, _V1_LEASE_AND_LOAD, _V1_COMMIT)),
    Migration(2, "full-text search over message history", _V2_SEARCH),
    Migration(3, "compact history, commit marks, listing order", (*_V3_TABLES, _V3_COMMIT)),
    Migration(4, "commit fast path, single-row lease_and_load", (*_V4_LEASE_AND_LOAD, _V4_COMMIT)),
    Migration(5, "lease_and_load commits the lease before reading", _V5_LEASE_AND_LOAD),
    Migration(6, "minute buckets in the listing and due indexes (HOT commits)", _V6_BUCKETS),
    Migration(7, "full-text index with a small pending list", _V7_SEARCH),
    Migration(8, "released leases keep their row", _V8_LEASES),
    Migration(9, "commit fast path checks the lease in its own statement", (_V9_COMMIT,)),
    Migration(10, "history as one row per commit, text apart", (*_V10_HISTORY, _V10_COMMIT)),
    Migration(11, "full-text index on history without a pending list", _V11_SEARCH),
    Migration(12, "plain bucket columns, lease rows updated in place",
              (_V12_BUCKETS, _V12_COMMIT, _V12_LEASE_AND_LOAD)),
    Migration(13, "single-statement lease-and-load and commit, implicit release",
              (*_V13_RELEASED, _V13_COMMIT)),
)
LATEST_VERSION = MIGRATIONS[-1].version


def render(step: str, schema: str) -> str:
    return step.format(schema=quote_schema(schema))


def lock_id(schema: str) -> int:
    """A stable advisory-lock id for migrating one schema (signed 64-bit)."""
    return zlib.crc32(f"chatstate-migrate:{schema}".encode()) - 2**31


def check_not_newer(applied: list[int], schema: str) -> None:
    newer = [v for v in applied if v > LATEST_VERSION]
    if newer:
        raise SchemaError(
            f"PostgreSQL schema {schema!r} is at version {max(newer)}, newer than this chatstate "
            f"(which knows up to {LATEST_VERSION}); upgrade chatstate. Nothing was changed"
        )


async def applied_versions(conn: Any, schema: str) -> list[int] | None:
    """Versions applied to `schema`, or None when it has no migrations table."""
    table = f"{quote_schema(schema)}.{MIGRATIONS_TABLE}"
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return None
    rows = await conn.fetch(f"SELECT version FROM {table} ORDER BY version")
    return [int(r["version"]) for r in rows]


async def apply_migrations(
    conn: Any, schema: str, *, upgrade: bool = True, target: int | None = None
) -> list[int]:
    """Bring `schema` to `target` (default `LATEST_VERSION`) in one transaction; return the
    versions applied.

    With `upgrade=False` an outdated schema raises `SchemaError` instead (nothing changed).
    """
    target = LATEST_VERSION if target is None else target
    quoted = quote_schema(schema)
    table = f"{quoted}.{MIGRATIONS_TABLE}"
    async with conn.transaction():
        # Serialises concurrent migrators (several processes starting at once).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_id(schema))
        applied = await applied_versions(conn, schema)
        if applied is None:
            foreign = await conn.fetchval(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm')",
                schema,
            )
            if foreign:
                raise SchemaError(
                    f"PostgreSQL schema {schema!r} holds tables that chatstate did not create "
                    f"(no {MIGRATIONS_TABLE} table); choose another schema with ?schema=<name>. "
                    "Nothing was changed"
                )
            applied = []
        check_not_newer(applied, schema)
        pending = [m for m in MIGRATIONS if m.version not in applied and m.version <= target]
        if not pending:
            return []
        if not upgrade:
            raise SchemaError(
                f"PostgreSQL schema {schema!r} is at version {max(applied, default=0)}, this "
                f"chatstate needs {LATEST_VERSION}; run `chatstate db upgrade <url>`. "
                "Nothing was changed"
            )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (version integer PRIMARY KEY, "
            "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in pending:
            for step in migration.steps:
                await conn.execute(render(step, schema))
            await conn.execute(
                f"INSERT INTO {table} (version, description) VALUES ($1, $2)",
                migration.version,
                migration.description,
            )
            log.info("PostgreSQL schema %s: applied migration %d (%s)",
                     schema, migration.version, migration.description)
    return [m.version for m in pending]
