-- Client schema v1: the keyring (TOFU-pinned directory keys), group keys and
-- the ids of content already shown.

-- Directory keys, pinned on first use (C6). A key that changes is kept in
-- `pending_pubkey` until the user accepts it with /trust.
CREATE TABLE keyring (
    user_id        TEXT PRIMARY KEY NOT NULL,
    pubkey         TEXT NOT NULL,
    pinned_ms      INTEGER NOT NULL,
    pending_pubkey TEXT,
    pending_ms     INTEGER
) STRICT;

-- The current key of each group this user belongs to or created.
CREATE TABLE group_keys (
    group_id   TEXT PRIMARY KEY NOT NULL,
    key        BLOB NOT NULL,             -- AES-256
    creator    TEXT NOT NULL,
    members    TEXT NOT NULL,             -- JSON array of user ids
    updated_ms INTEGER NOT NULL
) STRICT;

-- Content already shown, so a redelivery is not shown twice.
CREATE TABLE seen_messages (
    msg_id  TEXT PRIMARY KEY NOT NULL,
    seen_ms INTEGER NOT NULL
) STRICT;
