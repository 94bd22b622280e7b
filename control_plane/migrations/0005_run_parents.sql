-- Child runs: the run and node that started a run (a workflow node, an agent's
-- workflow tool, a map item "<map>[<i>]"); NULL for a run started by a client.
ALTER TABLE runs ADD COLUMN parent_run_id text;
ALTER TABLE runs ADD COLUMN parent_node_id text;

-- ListRuns(parent_run_id) and the child a node looks for when it runs again.
CREATE INDEX runs_parent ON runs (parent_run_id, parent_node_id, created_at)
    WHERE parent_run_id IS NOT NULL;
-- ListRuns(roots_only), newest first: a dashboard's default page, which must
-- not walk past thousands of map items.
CREATE INDEX runs_roots_created ON runs (created_at DESC, run_id DESC)
    WHERE parent_run_id IS NULL;
