-- One row per committed batch, written in the batch's own transaction. When a COMMIT's reply is
-- lost (the connection dies after the server committed), the writer's retry finds its token here
-- and reports the first attempt's counts instead of writing status and quality rows twice.
-- Rows older than a week are pruned by the writers.
CREATE TABLE IF NOT EXISTS data_ingestion.committed_batches (
  token TEXT PRIMARY KEY,
  inserted BIGINT NOT NULL,
  updated BIGINT NOT NULL,
  unchanged BIGINT NOT NULL,
  committed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS committed_batches_committed_at_idx
  ON data_ingestion.committed_batches (committed_at);
