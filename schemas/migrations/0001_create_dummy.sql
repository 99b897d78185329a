-- The example schema: a table in a schema of its own.
CREATE SCHEMA dummy;

CREATE TABLE dummy.dummy_table (
    id   integer PRIMARY KEY,
    name text NOT NULL
);
