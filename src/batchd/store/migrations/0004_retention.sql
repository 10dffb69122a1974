-- Storage lifecycle: once a batch's results pass the retention time, its requests (params
-- and results) are deleted a chunk at a time; the batch row stays, listable with its
-- counts, as the hosted API keeps archived batches. purged_at is when the last went.

ALTER TABLE batches ADD COLUMN purged_at REAL;
CREATE INDEX batches_unpurged ON batches (created_at) WHERE purged_at IS NULL;
