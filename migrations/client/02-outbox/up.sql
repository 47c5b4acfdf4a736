-- Client outbox: content the user sent that the node has not acknowledged
-- yet, in order. Sent again after every reconnect (and after a restart)
-- until the node acks it; the recipient drops duplicates by msg_id.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id     TEXT NOT NULL UNIQUE,
    to_id      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,             -- JSON object, msg_id included
    created_ms INTEGER NOT NULL
) STRICT;
