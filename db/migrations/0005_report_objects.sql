-- 0005: presentation states and key images beside the SR (issue 16).
-- Issue 16: what a report sends beside its SR. Per report, a GSPS or CSPS per
-- source series and optionally key images (Secondary Capture with the boxes
-- burned in), each a durable file like the SR; an export row per destination
-- and object (object_id NULL = the SR).
CREATE TABLE firstread.report_objects (
  object_id bigserial PRIMARY KEY,
  report_id bigint NOT NULL REFERENCES firstread.reports (report_id),
  kind text NOT NULL CHECK (kind IN ('gsps', 'csps', 'key_image')),
  source_uid text NOT NULL,  -- the source series (presentation state) or image (key image)
  sop_class_uid text NOT NULL,
  sop_instance_uid text NOT NULL UNIQUE,
  series_instance_uid text NOT NULL,
  instance_number integer NOT NULL,
  file_path text NOT NULL,   -- relative to storage.path
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX report_objects_report ON firstread.report_objects (report_id);

ALTER TABLE firstread.exports ADD COLUMN object_id bigint REFERENCES firstread.report_objects (object_id);

CREATE VIEW api.report_objects AS
SELECT object_id, report_id, kind, source_uid, sop_class_uid, sop_instance_uid, series_instance_uid,
       instance_number, file_path, created_at
FROM firstread.report_objects;

-- api.exports says which object each row sends (columns appended: the view's
-- earlier columns keep their order).
CREATE OR REPLACE VIEW api.exports AS
SELECT e.export_id, e.report_id, e.destination, CASE WHEN e.state = 'sending' THEN 'pending' ELSE e.state END AS state,
       e.attempts, e.last_error, e.next_attempt_at, e.sent_at,
       COALESCE(o.kind, 'sr') AS object, COALESCE(o.sop_instance_uid, r.sr_sop_instance_uid) AS sop_instance_uid
FROM firstread.exports e JOIN firstread.reports r USING (report_id)
LEFT JOIN firstread.report_objects o USING (object_id);

-- record_instance, now aware of every object we produced (SRs, presentation states, key images).
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
  -- Our own SR, presentation state or key image coming back from the PACS is
  -- stored but is not a late instance: it must not start another run of the study.
  IF inserted AND NOT EXISTS (SELECT 1 FROM firstread.reports WHERE sr_sop_instance_uid = p_sop_instance_uid)
     AND NOT EXISTS (SELECT 1 FROM firstread.report_objects WHERE sop_instance_uid = p_sop_instance_uid) THEN
    UPDATE firstread.studies SET last_received_at = now(), assembly_pending = true WHERE study_uid = p_study_uid;
  END IF;
  RETURN inserted;
END $$;
