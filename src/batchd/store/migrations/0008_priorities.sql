-- Lanes and fair share: a batch's priority (batchd-priority: -1 low, 0 normal, 1 high)
-- orders the engine's claims, and the input tokens its queued requests were estimated at
-- on create are what max_queued_input_tokens_per_workspace counts.

ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
