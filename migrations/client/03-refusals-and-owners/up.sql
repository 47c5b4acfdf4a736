-- Outbox entries the node refused for a transient reason (QUOTA_EXCEEDED,
-- STORAGE, RATE_LIMITED) stay, with how often and why; after a few refusals
-- one is `held`: set aside, not sent again on its own, so it cannot block
-- the entries behind it.
ALTER TABLE outbox ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
ALTER TABLE outbox ADD COLUMN held INTEGER NOT NULL DEFAULT 0;

-- The owner of each group (PROTOCOL.md C10): the creator of the first key
-- share adopted for it (or we, if we created it). Only the owner's shares
-- are adopted later.
CREATE TABLE group_owners (
    group_id  TEXT PRIMARY KEY NOT NULL,
    owner     TEXT NOT NULL,
    pinned_ms INTEGER NOT NULL
) STRICT;

-- Keys held before owners were pinned: their creator is the owner.
INSERT INTO group_owners (group_id, owner, pinned_ms)
    SELECT group_id, creator, updated_ms FROM group_keys;
