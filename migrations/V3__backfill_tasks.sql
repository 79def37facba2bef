-- The backfill work queue: one row per (data_source, symbol, timeframe, window) on a fixed grid,
-- so overlapping ranges share tasks. Workers claim a pending task with FOR UPDATE SKIP LOCKED and
-- a lease: the claiming session's pid (a task whose session is gone is free at once, as after
-- kill -9) and lease_until (renewed while the task is worked; a vanished machine's tasks are free
-- once it passes). A task is done once all its bars are committed; a window that reached past
-- the moment it was fetched stays pending, so the next backfill fetches it again.
CREATE TABLE IF NOT EXISTS data_ingestion.backfill_tasks (
  data_source VARCHAR(20) NOT NULL,
  symbol VARCHAR(20) NOT NULL,
  timeframe VARCHAR(5) NOT NULL,
  window_start TIMESTAMPTZ NOT NULL,
  window_end TIMESTAMPTZ NOT NULL,
  state VARCHAR(10) NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
  lease_pid INTEGER,
  lease_until TIMESTAMPTZ,
  claimed_at TIMESTAMPTZ,
  attempts INTEGER NOT NULL DEFAULT 0,
  bars BIGINT NOT NULL DEFAULT 0,
  fetched_at TIMESTAMPTZ,
  done_at TIMESTAMPTZ,
  last_error TEXT,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (data_source, symbol, timeframe, window_start),
  CHECK (window_end > window_start)
);
CREATE INDEX IF NOT EXISTS backfill_tasks_pending_idx
  ON data_ingestion.backfill_tasks (data_source, timeframe, window_start)
  WHERE state = 'pending';
