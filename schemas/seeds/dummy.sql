-- Three example rows; safe to run again.
INSERT INTO dummy.dummy_table (id, name) VALUES
    (1, 'alpha'),
    (2, 'beta'),
    (3, 'gamma')
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name;
