-- Custody and the directory stay on disk (issue 13): the router keeps
-- counts per destination and per sender in memory and reads rows back in
-- order when a destination can be sent to. These indexes make that cheap:
-- the counts at start come from index scans (not the rows and their
-- payloads), a destination's next page is a range of one index, and a
-- resend of content already on disk only is found by its id.
CREATE INDEX custody_by_dest ON custody (dest_kind, dest, seq, bytes, created_ms);
CREATE INDEX custody_by_sender ON custody (sender, bytes);
CREATE INDEX custody_by_msg ON custody (msg_id);
