-- Internal tables live in schema firstread and may change between versions;
-- schema api (views) is the stable interface for users, dashboards and tests.
CREATE SCHEMA IF NOT EXISTS firstread;
CREATE SCHEMA IF NOT EXISTS api;

CREATE TABLE firstread.studies (
  study_uid         text PRIMARY KEY,
  patient_id        text,
  patient_name      text,
  accession_number  text,
  study_date        text,
  calling_ae        text,
  first_received_at timestamptz NOT NULL DEFAULT now(),
  last_received_at  timestamptz NOT NULL DEFAULT now(),
  -- true while the study is receiving: set by every new instance, cleared by
  -- the assembler when it turns the quiet study into jobs.
  assembly_pending  boolean NOT NULL DEFAULT true,
  -- incremented at each assembly; jobs of the current generation give the state.
  generation        integer NOT NULL DEFAULT 0,
  routed_jobs       integer NOT NULL DEFAULT 0
);
CREATE INDEX studies_pending_idx ON firstread.studies (last_received_at) WHERE assembly_pending;

CREATE TABLE firstread.instances (
  sop_instance_uid    text PRIMARY KEY,
  series_instance_uid text NOT NULL,
  study_uid           text NOT NULL REFERENCES firstread.studies (study_uid),
  sop_class_uid       text NOT NULL,
  transfer_syntax_uid text NOT NULL,
  modality            text,
  body_part           text,
  series_number       integer,
  instance_number     integer,
  rows                integer,
  columns             integer,
  frames              integer,
  file_path           text NOT NULL,
  file_size           bigint NOT NULL,
  calling_ae          text,
  received_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_study_idx ON firstread.instances (study_uid);

CREATE TABLE firstread.jobs (
  job_id           bigserial PRIMARY KEY,
  study_uid        text NOT NULL REFERENCES firstread.studies (study_uid),
  generation       integer NOT NULL,
  route            text NOT NULL,
  model            text NOT NULL,
  state            text NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead')),
  attempts         integer NOT NULL DEFAULT 0,
  max_attempts     integer NOT NULL,
  error            text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz,
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  lease_owner      text,
  lease_expires_at timestamptz
);
CREATE INDEX jobs_ready_idx ON firstread.jobs (next_attempt_at) WHERE state IN ('queued', 'failed');
CREATE INDEX jobs_lease_idx ON firstread.jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_study_idx ON firstread.jobs (study_uid, generation);

CREATE VIEW api.instances AS
SELECT sop_instance_uid, series_instance_uid, study_uid, sop_class_uid, transfer_syntax_uid,
       modality, body_part, rows, columns, frames, file_path, file_size, calling_ae, received_at
FROM firstread.instances;

CREATE VIEW api.jobs AS
SELECT job_id, study_uid, route, model,
       state, attempts, max_attempts, error, created_at, started_at, finished_at, next_attempt_at
FROM firstread.jobs;

-- state: receiving (instances still arriving or not yet quiet for stable_seconds),
-- queued, processing, reported, failed (a job of the current assembly is dead),
-- unrouted (quiet, but no route matched it).
CREATE VIEW api.studies AS
SELECT s.study_uid, s.patient_id, s.patient_name, s.accession_number, s.study_date,
       COALESCE(i.modalities, '{}') AS modalities,
       COALESCE(i.instance_count, 0) AS instance_count,
       s.calling_ae, s.first_received_at, s.last_received_at,
       CASE
         WHEN s.assembly_pending THEN 'receiving'
         WHEN j.total IS NULL OR j.total = 0 THEN 'unrouted'
         WHEN j.dead > 0 THEN 'failed'
         WHEN j.running > 0 THEN 'processing'
         WHEN j.waiting > 0 THEN 'queued'
         ELSE 'reported'
       END AS state
FROM firstread.studies s
LEFT JOIN LATERAL (
  SELECT array_agg(DISTINCT modality ORDER BY modality) FILTER (WHERE modality IS NOT NULL) AS modalities,
         count(*) AS instance_count
  FROM firstread.instances WHERE study_uid = s.study_uid) i ON true
LEFT JOIN LATERAL (
  SELECT count(*) AS total,
         count(*) FILTER (WHERE state = 'dead') AS dead,
         count(*) FILTER (WHERE state = 'running') AS running,
         count(*) FILTER (WHERE state IN ('queued', 'failed')) AS waiting
  FROM firstread.jobs WHERE study_uid = s.study_uid AND generation = s.generation) j ON true;
