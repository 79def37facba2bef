-- Splits and dividends seen per data source and symbol. A vendor that restates its history for
-- them (Yahoo) has the symbol's stored history re-fetched and rewritten when a fetch shows one
-- that is not here yet; it is recorded once the rewritten bars are committed, so a process that
-- dies in between rewrites again.
CREATE TABLE IF NOT EXISTS data_ingestion.corporate_actions (
  data_source VARCHAR(20) NOT NULL,
  symbol VARCHAR(20) NOT NULL,
  kind VARCHAR(10) NOT NULL CHECK (kind IN ('split', 'dividend')),
  effective_at TIMESTAMPTZ NOT NULL,
  detail TEXT NOT NULL DEFAULT '',
  seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (data_source, symbol, kind, effective_at)
);
