-- Reports produced by the pipeline, their findings, and the export outbox.
CREATE TABLE firstread.reports (
  report_id              bigserial PRIMARY KEY,
  study_uid              text NOT NULL REFERENCES firstread.studies (study_uid),
  -- one report per job: the report and the job's completion commit together
  job_id                 bigint NOT NULL UNIQUE REFERENCES firstread.jobs (job_id),
  route                  text NOT NULL,
  model                  text NOT NULL,
  model_version          text,
  language               text,
  text                   text NOT NULL,
  sr_sop_instance_uid    text NOT NULL UNIQUE,
  sr_series_instance_uid text NOT NULL,
  sr_file_path           text NOT NULL,
  supersedes_report_id   bigint REFERENCES firstread.reports (report_id),
  created_at             timestamptz NOT NULL DEFAULT now(),
  latency_ms             double precision,  -- last instance received -> SR stored
  -- where the time went: decode, inference, sr, database (ms)
  decode_ms              double precision,
  inference_ms           double precision,
  sr_ms                  double precision,
  db_ms                  double precision
);
CREATE INDEX reports_study_idx ON firstread.reports (study_uid, route, created_at);

CREATE TABLE firstread.findings (
  finding_id        bigserial PRIMARY KEY,
  report_id         bigint NOT NULL REFERENCES firstread.reports (report_id),
  label             text,
  text              text,
  sop_instance_uid  text,
  frame             integer,
  x1 double precision, y1 double precision, x2 double precision, y2 double precision,
  confidence        double precision
);
CREATE INDEX findings_report_idx ON firstread.findings (report_id);

CREATE TABLE firstread.exports (
  export_id        bigserial PRIMARY KEY,
  report_id        bigint NOT NULL REFERENCES firstread.reports (report_id),
  destination      text NOT NULL,
  ae_title         text NOT NULL,
  host             text NOT NULL,
  port             integer NOT NULL,
  state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
  attempts         integer NOT NULL DEFAULT 0,
  max_attempts     integer NOT NULL,
  last_error       text,
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  sent_at          timestamptz
);
CREATE INDEX exports_ready_idx ON firstread.exports (next_attempt_at) WHERE state IN ('pending', 'sending');

CREATE VIEW api.reports AS
SELECT report_id, study_uid, job_id, route, model, model_version, language, text, sr_sop_instance_uid,
       sr_file_path, supersedes_report_id, created_at, latency_ms, decode_ms, inference_ms, sr_ms, db_ms
FROM firstread.reports;

CREATE VIEW api.findings AS
SELECT finding_id, report_id, label, text, sop_instance_uid, frame, x1, y1, x2, y2, confidence
FROM firstread.findings;

-- 'sending' is internal (a sender holds it); users see it as pending.
CREATE VIEW api.exports AS
SELECT export_id, report_id, destination, CASE WHEN state = 'sending' THEN 'pending' ELSE state END AS state,
       attempts, last_error, next_attempt_at, sent_at
FROM firstread.exports;

-- record_instance, now aware of the SRs we produced.
CREATE OR REPLACE FUNCTION firstread.record_instance(
  p_sop_instance_uid text, p_series_instance_uid text, p_study_uid text, p_sop_class_uid text,
  p_transfer_syntax_uid text, p_modality text, p_body_part text, p_series_number integer,
  p_instance_number integer, p_rows integer, p_columns integer, p_frames integer, p_file_path text,
  p_file_size bigint, p_calling_ae text, p_patient_id text, p_patient_name text, p_accession_number text,
  p_study_date text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  inserted boolean;
BEGIN
  INSERT INTO firstread.studies AS s (study_uid, patient_id, patient_name, accession_number, study_date, calling_ae)
  VALUES (p_study_uid, p_patient_id, p_patient_name, p_accession_number, p_study_date, p_calling_ae)
  ON CONFLICT (study_uid) DO UPDATE SET
    patient_id = COALESCE(s.patient_id, EXCLUDED.patient_id),
    patient_name = COALESCE(s.patient_name, EXCLUDED.patient_name),
    accession_number = COALESCE(s.accession_number, EXCLUDED.accession_number),
    study_date = COALESCE(s.study_date, EXCLUDED.study_date),
    calling_ae = COALESCE(s.calling_ae, EXCLUDED.calling_ae);
  INSERT INTO firstread.instances AS i (sop_instance_uid, series_instance_uid, study_uid, sop_class_uid,
    transfer_syntax_uid, modality, body_part, series_number, instance_number, rows, columns, frames, file_path,
    file_size, calling_ae)
  VALUES (p_sop_instance_uid, p_series_instance_uid, p_study_uid, p_sop_class_uid, p_transfer_syntax_uid,
    p_modality, p_body_part, p_series_number, p_instance_number, p_rows, p_columns, p_frames, p_file_path,
    p_file_size, p_calling_ae)
  ON CONFLICT (sop_instance_uid) DO UPDATE SET series_instance_uid = EXCLUDED.series_instance_uid,
    sop_class_uid = EXCLUDED.sop_class_uid, transfer_syntax_uid = EXCLUDED.transfer_syntax_uid,
    modality = EXCLUDED.modality, body_part = EXCLUDED.body_part, rows = EXCLUDED.rows,
    columns = EXCLUDED.columns, frames = EXCLUDED.frames, file_path = EXCLUDED.file_path,
    file_size = EXCLUDED.file_size, received_at = now()
  RETURNING (i.xmax = 0) INTO inserted;
  -- Our own SR coming back from the PACS is stored but is not a late instance:
  -- it must not start another run of the study.
  IF inserted AND NOT EXISTS (SELECT 1 FROM firstread.reports WHERE sr_sop_instance_uid = p_sop_instance_uid) THEN
    UPDATE firstread.studies SET last_received_at = now(), assembly_pending = true WHERE study_uid = p_study_uid;
  END IF;
  RETURN inserted;
END $$;
