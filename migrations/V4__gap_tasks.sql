-- Gaps of the daemon's streams become durable work on the same queue: a task of mode 'stream'
-- is one feed's stretch [window_start, window_end) that a connection may have missed, recorded
-- before the next connection's first bar commits and pending until its bars are committed.
-- Grid windows of `backfill` keep mode 'backfill'. A second gap from the same start (no stream
-- bar committed in between) extends the pending one instead of adding a row.
ALTER TABLE data_ingestion.backfill_tasks
  ADD COLUMN IF NOT EXISTS mode VARCHAR(10) NOT NULL DEFAULT 'backfill'
    CHECK (mode IN ('backfill', 'stream'));
ALTER TABLE data_ingestion.backfill_tasks DROP CONSTRAINT IF EXISTS backfill_tasks_pkey;
ALTER TABLE data_ingestion.backfill_tasks
  ADD CONSTRAINT backfill_tasks_pkey PRIMARY KEY (data_source, symbol, timeframe, mode, window_start);
DROP INDEX IF EXISTS data_ingestion.backfill_tasks_pending_idx;
CREATE INDEX IF NOT EXISTS backfill_tasks_pending_idx
  ON data_ingestion.backfill_tasks (data_source, timeframe, mode, window_start)
  WHERE state = 'pending';
