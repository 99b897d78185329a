-- envctl:no-transaction
-- CREATE INDEX CONCURRENTLY cannot run in a transaction; the marker above runs it outside one.
CREATE INDEX CONCURRENTLY IF NOT EXISTS dummy_table_name_idx ON dummy.dummy_table (name);
