-- The seed's table, column for column and constraint for constraint.
CREATE TABLE IF NOT EXISTS data_ingestion.market_data (
  id BIGSERIAL,
  symbol VARCHAR(20) NOT NULL,
  timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
  open DECIMAL(15,4), high DECIMAL(15,4), low DECIMAL(15,4), close DECIMAL(15,4),
  volume BIGINT,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  data_source VARCHAR(20) NOT NULL DEFAULT 'polygon',
  CONSTRAINT unique_symbol_timestamp_source UNIQUE (symbol, timestamp, data_source),
  CONSTRAINT valid_data_source CHECK (data_source IN ('polygon', 'yahoo', 'yahoo_adjusted', 'alpaca'))
);

-- One row per problem found in vendor data.
CREATE TABLE IF NOT EXISTS data_ingestion.data_quality_logs (
  id BIGSERIAL PRIMARY KEY,
  logged_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  data_source VARCHAR(20) NOT NULL,
  symbol VARCHAR(20),
  bar_timestamp TIMESTAMPTZ,
  check_name VARCHAR(50) NOT NULL,
  severity VARCHAR(10) NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
  action VARCHAR(20) NOT NULL CHECK (action IN ('rejected', 'accepted', 'repaired')),
  details JSONB
);
-- Operators read the log newest first, per source and check.
CREATE INDEX IF NOT EXISTS data_quality_logs_logged_at_idx
  ON data_ingestion.data_quality_logs (logged_at DESC);
CREATE INDEX IF NOT EXISTS data_quality_logs_source_check_idx
  ON data_ingestion.data_quality_logs (data_source, check_name, logged_at DESC);

-- Where every feed stands; the primary key is the daemon's lookup.
CREATE TABLE IF NOT EXISTS data_ingestion.ingestion_status (
  data_source VARCHAR(20) NOT NULL,
  symbol VARCHAR(20) NOT NULL,
  mode VARCHAR(10) NOT NULL CHECK (mode IN ('stream', 'poll', 'backfill')),
  timeframe VARCHAR(5) NOT NULL,
  state VARCHAR(12) NOT NULL CHECK (state IN ('running', 'idle', 'completed', 'error')),
  last_bar_timestamp TIMESTAMPTZ,
  rows_written BIGINT NOT NULL DEFAULT 0,
  last_success_at TIMESTAMPTZ,
  last_error TEXT,
  last_error_at TIMESTAMPTZ,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (data_source, symbol, mode)
);
