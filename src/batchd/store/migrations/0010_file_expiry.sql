-- Files expire, as OpenAI's do: past its expires_at a file is gone (404, not listed) and the
-- purger deletes it. A batch's output and error files live expires_after seconds from the
-- moment their batch ends (OpenAI anchors output_expires_after at the files' creation, which
-- is the batch's end), and never longer than the batch's results (their expires_at until
-- then: the batch's creation plus the retention time). Indexes: the purger finds expired
-- files by expires_at, and a batch's files by batch_seq.

ALTER TABLE files ADD COLUMN expires_after REAL;
CREATE INDEX files_by_expiry ON files (expires_at);
CREATE INDEX files_by_batch ON files (batch_seq);
