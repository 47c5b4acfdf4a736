-- Node schema v1: the master's directory and mailbox, every node's view of
-- the mesh (servers, presence) and the replay caches of PROTOCOL.md C3/C5.

-- Directory (master): user id -> first key registered for it, pinned (C2).
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY NOT NULL,
    pubkey        TEXT NOT NULL,             -- base64url SPKI DER
    legacy        INTEGER NOT NULL DEFAULT 0 -- registered by an unsigned hello
                  CHECK (legacy IN (0, 1)),
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
) STRICT;

-- Servers of the mesh: id pinned to its first key (C5), and where to dial it.
CREATE TABLE servers (
    server_id     TEXT PRIMARY KEY NOT NULL,
    pubkey        TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('master', 'local')),
    host          TEXT NOT NULL,
    port          INTEGER NOT NULL,
    hello_ts      INTEGER NOT NULL,          -- ts of the last accepted link hello
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
) STRICT;

-- Presence cache: where each online user is, as last advertised. Kept so a
-- restarted node resumes with what reference peers will not re-advertise.
CREATE TABLE presence (
    user_id    TEXT PRIMARY KEY NOT NULL,
    location   TEXT NOT NULL,             -- server id
    via        TEXT NOT NULL,             -- the linked server it was learned from
    proof      TEXT,                      -- the user's signed hello, JSON
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX presence_by_location ON presence (location);

-- Signed user hellos already seen (C3 replay cache), by SHA-256 of the
-- signature; rows older than the freshness window are pruned.
CREATE TABLE seen_hellos (
    digest  BLOB PRIMARY KEY NOT NULL,
    seen_ms INTEGER NOT NULL
) STRICT;

-- Presence proofs and the server that first presented each (C5).
CREATE TABLE proof_owners (
    digest    BLOB PRIMARY KEY NOT NULL,
    server_id TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    first_ms  INTEGER NOT NULL
) STRICT;

-- Custody (PROTOCOL.md B): content this node took responsibility for and
-- has not handed on yet, one row per destination, in arrival order (`seq`).
-- At the master, rows for users online nowhere are the offline mailbox.
CREATE TABLE custody (
    seq        INTEGER PRIMARY KEY,
    msg_id     TEXT NOT NULL,
    dest_kind  TEXT NOT NULL CHECK (dest_kind IN ('user', 'server')),
    dest       TEXT NOT NULL,
    kind       TEXT NOT NULL,             -- DELIVER or the frame type
    to_id      TEXT,                      -- frame `to`, when not implied
    via        TEXT,                      -- server it came from (NULL: our user)
    sender     TEXT NOT NULL,
    payload    TEXT NOT NULL,             -- JSON object
    bytes      INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;

-- Group membership (master and locals), from the latest key share seen for
-- each group: who a group message or file is fanned out to.
CREATE TABLE groups (
    group_id   TEXT PRIMARY KEY NOT NULL,
    members    TEXT NOT NULL,             -- JSON array of user ids
    updated_ms INTEGER NOT NULL
) STRICT;
