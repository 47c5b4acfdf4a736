-- Node schema v2: the master's registration policy (PROTOCOL.md C14).

-- Secrets of the node's policies. `invite`: the HMAC key invite codes are
-- made with, so the running master checks a code without reading this file.
CREATE TABLE policy_keys (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL                  -- hex
) STRICT;
INSERT INTO policy_keys (name, value) VALUES ('invite', lower(hex(randomblob(32))));

-- Invite codes made by `socp admin invite`; one use each.
CREATE TABLE invites (
    code       TEXT PRIMARY KEY NOT NULL,
    created_ms INTEGER NOT NULL,
    used_by    TEXT,                      -- the user id it registered
    used_ms    INTEGER
) STRICT;

-- Ids whose key an operator reset (`socp admin reset-key`): the next hello
-- pins a new key, whatever the registration policy.
CREATE TABLE key_resets (
    user_id  TEXT PRIMARY KEY NOT NULL,
    reset_ms INTEGER NOT NULL
) STRICT;
