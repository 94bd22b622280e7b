-- statepipe schema, version 1.
-- Every query the API makes has an index below; events are written in
-- batches (COPY) and replayed by (run_id, seq).

CREATE TABLE workflows (
    name        text        NOT NULL,
    version     text        NOT NULL,
    spec        bytea       NOT NULL,   -- statepipe.v1.WorkflowSpec
    spec_json   jsonb       NOT NULL,   -- the same, for people and SQL
    created_at  timestamptz NOT NULL DEFAULT now(),
    registered  bigserial   NOT NULL,   -- registration order: "latest" is the last registered
    PRIMARY KEY (name, version)
);
CREATE INDEX workflows_latest ON workflows (name, registered DESC);
CREATE INDEX workflows_registered ON workflows (registered);

CREATE TABLE runs (
    run_id            text        PRIMARY KEY,
    workflow_name     text        NOT NULL,
    workflow_version  text        NOT NULL,
    spec              bytea       NOT NULL,   -- the spec this run executes (a snapshot)
    status            text        NOT NULL,
    input             jsonb,
    output            jsonb,
    error             text        NOT NULL DEFAULT '',
    labels            jsonb       NOT NULL DEFAULT '{}',
    idempotency_key   text,
    node_counts       jsonb       NOT NULL DEFAULT '{}',
    last_seq          bigint      NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX runs_idempotency_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_created ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_updated ON runs (updated_at DESC, run_id DESC);
CREATE INDEX runs_finished ON runs (finished_at DESC, run_id DESC);
CREATE INDEX runs_status_created ON runs (status, created_at DESC, run_id DESC);
CREATE INDEX runs_workflow_created ON runs (workflow_name, created_at DESC, run_id DESC);
CREATE INDEX runs_labels ON runs USING gin (labels jsonb_path_ops);
-- Recovery looks for active runs whose lease ran out.
CREATE INDEX runs_active_lease ON runs (lease_expires_at)
    WHERE status IN ('PENDING', 'RUNNING');

CREATE TABLE nodes (
    run_id       text        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    node_id      text        NOT NULL,
    position     integer     NOT NULL,   -- order in the spec
    kind         text        NOT NULL,
    status       text        NOT NULL,
    attempt      integer     NOT NULL DEFAULT 0,
    input        jsonb,
    output       jsonb,
    error        text        NOT NULL DEFAULT '',
    usage        jsonb,
    queued_at    timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (run_id, node_id)
);

-- No foreign key to runs: a per-row check would cost more than the insert,
-- and only the control plane writes events, for runs it created.
CREATE TABLE events (
    run_id   text        NOT NULL,
    seq      bigint      NOT NULL,
    ts       timestamptz NOT NULL,
    kind     text        NOT NULL,
    node_id  text        NOT NULL DEFAULT '',
    body     bytea       NOT NULL,   -- statepipe.v1.Event, streamed to watchers as is
    PRIMARY KEY (run_id, seq)
);
-- Reads by node (ListEvents node_id) scan the run's range of the primary key:
-- a second index would cost every token insert more than it saves readers.
