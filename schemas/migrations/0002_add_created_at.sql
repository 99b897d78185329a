-- Evolve the table: every row records when it was made.
ALTER TABLE dummy.dummy_table
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
