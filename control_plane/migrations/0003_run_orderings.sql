-- ListRuns orders by started_at, status, workflow_name and duration_ms too
-- (and WatchRuns' snapshot by the same): one index behind each, ties broken
-- by run_id as the keyset pages compare (value, run_id).
CREATE INDEX runs_started ON runs (started_at DESC, run_id DESC);
CREATE INDEX runs_status ON runs (status, run_id);
CREATE INDEX runs_workflow ON runs (workflow_name, run_id);
-- duration_ms orders by finished_at - started_at; runs without both come last.
CREATE INDEX runs_duration ON runs ((finished_at - started_at), run_id);
-- The runs that come last in those two orders, in run_id order: small, since
-- nearly every run starts when it is created and most have finished.
CREATE INDEX runs_unstarted ON runs (run_id) WHERE started_at IS NULL;
CREATE INDEX runs_undurated ON runs (run_id) WHERE (finished_at - started_at) IS NULL;
