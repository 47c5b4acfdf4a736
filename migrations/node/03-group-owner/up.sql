-- A group's owner (PROTOCOL.md C10): the creator named in the first key
-- share seen for it. Only the owner may rotate the key or change members.
-- Groups recorded before this migration have none until their next share,
-- which pins its creator.
ALTER TABLE groups ADD COLUMN owner TEXT;
