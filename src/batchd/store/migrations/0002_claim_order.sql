-- Claims walk the queue of one (backend, batch) in id order from a watermark: the queued
-- index ends with id so that PostgreSQL starts the scan at the watermark instead of walking
-- the dead entries of every request claimed before it (SQLite's index already ends in rowid).

DROP INDEX requests_queued;
CREATE INDEX requests_queued ON requests (backend, batch_seq, id) WHERE state = 'queued';
