-- A batch's counts per data source (a Yahoo fetch writes two), so that a writer whose COMMIT
-- reply was lost reports each source's own counts on its retry, as the first attempt did:
-- {"polygon": [inserted, updated, unchanged], ...}. NULL on rows written before this column.
ALTER TABLE data_ingestion.committed_batches ADD COLUMN IF NOT EXISTS by_source JSONB;
