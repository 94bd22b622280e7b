-- A run's usage: the sum over its nodes of each numeric key of their usage
-- (tokens, cost, ...), kept by the run's actor as its nodes finish; NULL when
-- no node reported any. Runs stored before this column get theirs from their
-- nodes here, so that an actor taking one over adds to the right total.
ALTER TABLE runs ADD COLUMN usage jsonb;

UPDATE runs SET usage = totals.usage
FROM (
    SELECT run_id, jsonb_object_agg(key, total) AS usage
    FROM (
        SELECT n.run_id, u.key, sum((u.value #>> '{}')::numeric) AS total
        FROM nodes n, jsonb_each(n.usage) u
        WHERE jsonb_typeof(n.usage) = 'object' AND jsonb_typeof(u.value) = 'number'
        GROUP BY n.run_id, u.key
    ) per_key
    GROUP BY run_id
) totals
WHERE runs.run_id = totals.run_id;
