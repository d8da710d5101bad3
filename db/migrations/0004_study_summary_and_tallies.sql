-- Queries that stay flat as the archive grows (issue 18).
--
-- 1. The study's state, modalities and instance count live on the study row,
--    kept by triggers in the same transaction as every change that moves them
--    (record_instance, assembly, claim / complete / fail, lease expiry,
--    reprocess), instead of per-row LATERAL aggregates in api.studies.
-- 2. Tallies for /metrics (studies, jobs and exports by state, instances and
--    bytes, reports by model), kept on change: every change appends a row to
--    firstread.tally_changes (inserts never wait on one another, so concurrent
--    ingest does not queue on a hot counter row) and firstread.compact_tallies()
--    folds them into firstread.tallies. A scrape reads a few dozen rows.
-- 3. Indexes for the keyset pages and filters.
-- A bulk load (bench/db_scale) turns the triggers off and calls
-- firstread.rebuild_summaries() at the end.

ALTER TABLE firstread.studies
  ADD COLUMN state          text    NOT NULL DEFAULT 'receiving',
  ADD COLUMN modalities     text[]  NOT NULL DEFAULT '{}',
  ADD COLUMN instance_count integer NOT NULL DEFAULT 0;

-- state: receiving (instances still arriving or not yet quiet for stable_seconds),
-- unrouted (quiet, but no route matched it), failed (a job of the current
-- assembly is dead), processing, queued, reported.
CREATE FUNCTION firstread.study_state(p_study_uid text, p_pending boolean, p_generation integer)
RETURNS text LANGUAGE sql STABLE AS $$
  SELECT CASE
           WHEN p_pending THEN 'receiving'
           WHEN count(*) = 0 THEN 'unrouted'
           WHEN count(*) FILTER (WHERE state = 'dead') > 0 THEN 'failed'
           WHEN count(*) FILTER (WHERE state = 'running') > 0 THEN 'processing'
           WHEN count(*) FILTER (WHERE state IN ('queued', 'failed')) > 0 THEN 'queued'
           ELSE 'reported'
         END
  FROM firstread.jobs WHERE NOT p_pending AND study_uid = p_study_uid AND generation = p_generation
$$;

-- The study row's own changes (assembly, reprocess, a late instance).
CREATE FUNCTION firstread.studies_set_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.state := firstread.study_state(NEW.study_uid, NEW.assembly_pending, NEW.generation);
  RETURN NEW;
END $$;
CREATE TRIGGER studies_state_on_insert BEFORE INSERT ON firstread.studies FOR EACH ROW
  WHEN (NOT NEW.assembly_pending) EXECUTE FUNCTION firstread.studies_set_state();
CREATE TRIGGER studies_state_on_update BEFORE UPDATE ON firstread.studies FOR EACH ROW
  WHEN (OLD.assembly_pending IS DISTINCT FROM NEW.assembly_pending OR OLD.generation IS DISTINCT FROM NEW.generation)
  EXECUTE FUNCTION firstread.studies_set_state();

-- A job's change of state moves its study's state.
CREATE FUNCTION firstread.refresh_study_states(p_study_uids text[]) RETURNS void LANGUAGE sql AS $$
  UPDATE firstread.studies s SET state = c.state
  FROM (SELECT study_uid, firstread.study_state(study_uid, assembly_pending, generation) AS state
        FROM firstread.studies WHERE study_uid = ANY(p_study_uids)) c
  WHERE s.study_uid = c.study_uid AND s.state <> c.state
$$;
CREATE FUNCTION firstread.jobs_inserted_or_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM firstread.refresh_study_states(ARRAY(SELECT DISTINCT study_uid FROM changed_jobs));
  RETURN NULL;
END $$;
CREATE FUNCTION firstread.jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Heartbeats change only the lease: nothing to do for them.
  PERFORM firstread.refresh_study_states(ARRAY(
    SELECT DISTINCT n.study_uid FROM new_jobs n JOIN old_jobs o USING (job_id) WHERE n.state <> o.state));
  RETURN NULL;
END $$;
CREATE TRIGGER jobs_study_state_on_insert AFTER INSERT ON firstread.jobs
  REFERENCING NEW TABLE AS changed_jobs FOR EACH STATEMENT EXECUTE FUNCTION firstread.jobs_inserted_or_deleted();
CREATE TRIGGER jobs_study_state_on_delete AFTER DELETE ON firstread.jobs
  REFERENCING OLD TABLE AS changed_jobs FOR EACH STATEMENT EXECUTE FUNCTION firstread.jobs_inserted_or_deleted();
CREATE TRIGGER jobs_study_state_on_update AFTER UPDATE ON firstread.jobs
  REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION firstread.jobs_updated();

-- Instances move their study's count and modalities. Row triggers: an
-- instance is recorded one at a time on the C-STORE path, and a resend that
-- changes nothing that counts (WHEN below) costs nothing here.
CREATE FUNCTION firstread.study_modalities(p_study_uid text) RETURNS text[] LANGUAGE sql STABLE AS $$
  SELECT COALESCE(array_agg(DISTINCT modality ORDER BY modality) FILTER (WHERE modality IS NOT NULL), '{}')
  FROM firstread.instances WHERE study_uid = p_study_uid
$$;
CREATE FUNCTION firstread.instance_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE firstread.studies
    SET instance_count = instance_count + 1,
        modalities = CASE WHEN NEW.modality IS NULL OR NEW.modality = ANY (modalities) THEN modalities
                          ELSE ARRAY(SELECT DISTINCT m FROM unnest(modalities || NEW.modality) m ORDER BY m) END
    WHERE study_uid = NEW.study_uid;
    INSERT INTO firstread.tally_changes (name, key, n, amount) VALUES ('instances', '', 1, NEW.file_size);
  ELSIF TG_OP = 'DELETE' THEN
    UPDATE firstread.studies
    SET instance_count = instance_count - 1, modalities = firstread.study_modalities(OLD.study_uid)
    WHERE study_uid = OLD.study_uid;
    INSERT INTO firstread.tally_changes (name, key, n, amount) VALUES ('instances', '', -1, -OLD.file_size);
  ELSE
    IF OLD.study_uid <> NEW.study_uid THEN
      UPDATE firstread.studies
      SET instance_count = instance_count - 1, modalities = firstread.study_modalities(OLD.study_uid)
      WHERE study_uid = OLD.study_uid;
      UPDATE firstread.studies
      SET instance_count = instance_count + 1, modalities = firstread.study_modalities(NEW.study_uid)
      WHERE study_uid = NEW.study_uid;
    ELSIF OLD.modality IS DISTINCT FROM NEW.modality THEN
      UPDATE firstread.studies SET modalities = firstread.study_modalities(NEW.study_uid)
      WHERE study_uid = NEW.study_uid;
    END IF;
    IF NEW.file_size <> OLD.file_size THEN
      INSERT INTO firstread.tally_changes (name, key, n, amount)
      VALUES ('instances', '', 0, NEW.file_size - OLD.file_size);
    END IF;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER instances_summary_on_insert_delete AFTER INSERT OR DELETE ON firstread.instances
  FOR EACH ROW EXECUTE FUNCTION firstread.instance_row_changed();
CREATE TRIGGER instances_summary_on_update AFTER UPDATE ON firstread.instances FOR EACH ROW
  WHEN (OLD.study_uid <> NEW.study_uid OR OLD.modality IS DISTINCT FROM NEW.modality
        OR OLD.file_size <> NEW.file_size)
  EXECUTE FUNCTION firstread.instance_row_changed();

-- Tallies.
CREATE TABLE firstread.tallies (
  name   text   NOT NULL,  -- studies | instances | jobs | exports | reports
  key    text   NOT NULL,  -- the state (studies, jobs, exports), the model (reports), '' (instances)
  n      bigint NOT NULL,
  amount bigint NOT NULL DEFAULT 0,  -- instances: bytes
  PRIMARY KEY (name, key)
);
CREATE TABLE firstread.tally_changes (
  name   text   NOT NULL,
  key    text   NOT NULL,
  n      bigint NOT NULL,
  amount bigint NOT NULL DEFAULT 0
);

-- Folds the appended changes into the tallies. Any node may run it at any
-- time; concurrent runs never count a change twice (each change row is
-- deleted by exactly one of them).
CREATE FUNCTION firstread.compact_tallies() RETURNS void LANGUAGE sql AS $$
  WITH moved AS (DELETE FROM firstread.tally_changes RETURNING name, key, n, amount)
  INSERT INTO firstread.tallies AS t (name, key, n, amount)
  SELECT name, key, sum(n), sum(amount) FROM moved GROUP BY name, key ORDER BY name, key
  ON CONFLICT (name, key) DO UPDATE SET n = t.n + EXCLUDED.n, amount = t.amount + EXCLUDED.amount
$$;

-- Row triggers guarded by WHEN: a change that leaves the state alone (a
-- heartbeat, a study's last_received_at) costs nothing here.
CREATE FUNCTION firstread.tally_key(p_name text, p_key text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_name = 'exports' AND p_key = 'sending' THEN 'pending' ELSE p_key END
$$;
-- TG_ARGV: the tally's name, the column that is its key.
CREATE FUNCTION firstread.tally_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  old_key text;
  new_key text;
BEGIN
  IF TG_OP <> 'INSERT' THEN old_key := firstread.tally_key(TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[1]); END IF;
  IF TG_OP <> 'DELETE' THEN new_key := firstread.tally_key(TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[1]); END IF;
  IF old_key IS NOT DISTINCT FROM new_key THEN RETURN NULL; END IF;
  IF old_key IS NOT NULL THEN
    INSERT INTO firstread.tally_changes (name, key, n) VALUES (TG_ARGV[0], old_key, -1);
  END IF;
  IF new_key IS NOT NULL THEN
    INSERT INTO firstread.tally_changes (name, key, n) VALUES (TG_ARGV[0], new_key, 1);
  END IF;
  RETURN NULL;
END $$;
-- A TRUNCATE (tests between cases) empties the tallies of that table.
CREATE FUNCTION firstread.tally_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM firstread.tally_changes WHERE name = TG_ARGV[0];
  DELETE FROM firstread.tallies WHERE name = TG_ARGV[0];
  RETURN NULL;
END $$;

CREATE TRIGGER studies_tally_on_insert_delete AFTER INSERT OR DELETE ON firstread.studies
  FOR EACH ROW EXECUTE FUNCTION firstread.tally_row_changed('studies', 'state');
CREATE TRIGGER studies_tally_on_update AFTER UPDATE ON firstread.studies FOR EACH ROW
  WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION firstread.tally_row_changed('studies', 'state');
CREATE TRIGGER studies_tally_on_truncate AFTER TRUNCATE ON firstread.studies
  FOR EACH STATEMENT EXECUTE FUNCTION firstread.tally_truncated('studies');

CREATE TRIGGER jobs_tally_on_insert_delete AFTER INSERT OR DELETE ON firstread.jobs
  FOR EACH ROW EXECUTE FUNCTION firstread.tally_row_changed('jobs', 'state');
CREATE TRIGGER jobs_tally_on_update AFTER UPDATE ON firstread.jobs FOR EACH ROW
  WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION firstread.tally_row_changed('jobs', 'state');
CREATE TRIGGER jobs_tally_on_truncate AFTER TRUNCATE ON firstread.jobs
  FOR EACH STATEMENT EXECUTE FUNCTION firstread.tally_truncated('jobs');

CREATE TRIGGER exports_tally_on_insert_delete AFTER INSERT OR DELETE ON firstread.exports
  FOR EACH ROW EXECUTE FUNCTION firstread.tally_row_changed('exports', 'state');
CREATE TRIGGER exports_tally_on_update AFTER UPDATE ON firstread.exports FOR EACH ROW
  WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION firstread.tally_row_changed('exports', 'state');
CREATE TRIGGER exports_tally_on_truncate AFTER TRUNCATE ON firstread.exports
  FOR EACH STATEMENT EXECUTE FUNCTION firstread.tally_truncated('exports');

CREATE TRIGGER reports_tally_on_insert_delete AFTER INSERT OR DELETE ON firstread.reports
  FOR EACH ROW EXECUTE FUNCTION firstread.tally_row_changed('reports', 'model');
CREATE TRIGGER reports_tally_on_update AFTER UPDATE ON firstread.reports FOR EACH ROW
  WHEN (OLD.model IS DISTINCT FROM NEW.model) EXECUTE FUNCTION firstread.tally_row_changed('reports', 'model');
CREATE TRIGGER reports_tally_on_truncate AFTER TRUNCATE ON firstread.reports
  FOR EACH STATEMENT EXECUTE FUNCTION firstread.tally_truncated('reports');

CREATE TRIGGER instances_tally_on_truncate AFTER TRUNCATE ON firstread.instances
  FOR EACH STATEMENT EXECUTE FUNCTION firstread.tally_truncated('instances');

-- Recomputes every summary and tally from the rows (an archive migrated from
-- an earlier version, or a bulk load with triggers disabled).
CREATE FUNCTION firstread.rebuild_summaries() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE firstread.studies s SET instance_count = a.n, modalities = a.m
  FROM (SELECT s2.study_uid, count(i.sop_instance_uid)::integer AS n,
               COALESCE(array_agg(DISTINCT i.modality ORDER BY i.modality) FILTER (WHERE i.modality IS NOT NULL),
                        '{}') AS m
        FROM firstread.studies s2 LEFT JOIN firstread.instances i ON i.study_uid = s2.study_uid
        GROUP BY s2.study_uid) a
  WHERE s.study_uid = a.study_uid AND (s.instance_count <> a.n OR s.modalities <> a.m);
  UPDATE firstread.studies s SET state = c.state
  FROM (SELECT s2.study_uid,
               CASE WHEN s2.assembly_pending THEN 'receiving'
                    WHEN j.total IS NULL THEN 'unrouted'
                    WHEN j.dead > 0 THEN 'failed'
                    WHEN j.running > 0 THEN 'processing'
                    WHEN j.waiting > 0 THEN 'queued'
                    ELSE 'reported' END AS state
        FROM firstread.studies s2
        LEFT JOIN (SELECT study_uid, generation, count(*) AS total,
                          count(*) FILTER (WHERE state = 'dead') AS dead,
                          count(*) FILTER (WHERE state = 'running') AS running,
                          count(*) FILTER (WHERE state IN ('queued', 'failed')) AS waiting
                   FROM firstread.jobs GROUP BY study_uid, generation) j
          ON j.study_uid = s2.study_uid AND j.generation = s2.generation) c
  WHERE s.study_uid = c.study_uid AND s.state <> c.state;
  DELETE FROM firstread.tally_changes;
  DELETE FROM firstread.tallies;
  INSERT INTO firstread.tallies (name, key, n, amount)
  SELECT 'studies', state, count(*), 0 FROM firstread.studies GROUP BY state
  UNION ALL SELECT 'instances', '', count(*), COALESCE(sum(file_size), 0) FROM firstread.instances
  UNION ALL SELECT 'jobs', state, count(*), 0 FROM firstread.jobs GROUP BY state
  UNION ALL SELECT 'exports', CASE WHEN state = 'sending' THEN 'pending' ELSE state END, count(*), 0
            FROM firstread.exports GROUP BY 2
  UNION ALL SELECT 'reports', model, count(*), 0 FROM firstread.reports GROUP BY model;
END $$;
SELECT firstread.rebuild_summaries();

CREATE OR REPLACE VIEW api.studies AS
SELECT study_uid, patient_id, patient_name, accession_number, study_date, modalities,
       instance_count::bigint AS instance_count, calling_ae, first_received_at, last_received_at, state
FROM firstread.studies;

-- Keyset pages, newest first, and their filters.
CREATE INDEX studies_newest_idx ON firstread.studies (first_received_at DESC, study_uid DESC);
CREATE INDEX studies_state_newest_idx ON firstread.studies (state, first_received_at DESC, study_uid DESC);
CREATE INDEX studies_modalities_idx ON firstread.studies USING gin (modalities);
CREATE INDEX studies_last_received_idx ON firstread.studies (last_received_at);
CREATE INDEX exports_report_idx ON firstread.exports (report_id);
CREATE INDEX reports_created_idx ON firstread.reports (created_at, report_id);
CREATE INDEX jobs_state_newest_idx ON firstread.jobs (state, job_id);
-- The README's "SRs not yet in the PACS": few rows, found without reading the sent ones.
CREATE INDEX exports_unsent_idx ON firstread.exports (report_id)
  WHERE (CASE WHEN state = 'sending' THEN 'pending' ELSE state END) <> 'sent';
