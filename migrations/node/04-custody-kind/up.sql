-- A custody row's `kind` is the frame type it leaves as. DMs were stored
-- under the pseudo-type DELIVER; they are now stored as PEER_DELIVER (the
-- node sends them as PEER_DELIVER on a link, USER_DELIVER to the recipient).
UPDATE custody SET kind = 'PEER_DELIVER' WHERE kind = 'DELIVER';
