-- Recording a new instance of a known study writes its study row once (issue 18,
-- ingest speed). Before, three UPDATEs of that row per new instance: the study
-- upsert (even when it changed nothing), the instance trigger's count and
-- modalities, and record_instance's last_received_at / assembly_pending; each
-- left a row version behind, and the last one (an indexed column) also new
-- entries in every index of firstread.studies.
--
-- Now:
-- 1. The study upsert fills in only what is missing (ON CONFLICT ... WHERE):
--    for a known study whose patient attributes are set it updates nothing
--    but still locks the row, so the lock order (study, then instance) stays.
-- 2. The instance trigger's one UPDATE does all of it: count, modalities and,
--    unless the instance is one of firstread's own objects coming back from the
--    PACS (an SR, presentation state or key image: not a late instance), the
--    last reception and assembly_pending (a late instance leads to a re-run).
--    What it does for DELETE and UPDATE is unchanged.

CREATE OR REPLACE FUNCTION firstread.instance_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  late boolean;
BEGIN
  IF TG_OP = 'INSERT' THEN
    late := NOT EXISTS (SELECT 1 FROM firstread.reports WHERE sr_sop_instance_uid = NEW.sop_instance_uid)
            AND NOT EXISTS (SELECT 1 FROM firstread.report_objects WHERE sop_instance_uid = NEW.sop_instance_uid);
    UPDATE firstread.studies
    SET instance_count = instance_count + 1,
        modalities = CASE WHEN NEW.modality IS NULL OR NEW.modality = ANY (modalities) THEN modalities
                          ELSE ARRAY(SELECT DISTINCT m FROM unnest(modalities || NEW.modality) m ORDER BY m) END,
        last_received_at = CASE WHEN late THEN now() ELSE last_received_at END,
        assembly_pending = assembly_pending OR late
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

-- Returns true when the instance is new; a new instance marks its study as
-- receiving again (in the trigger above), a resend does not.
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
    calling_ae = COALESCE(s.calling_ae, EXCLUDED.calling_ae)
  WHERE (s.patient_id IS NULL AND EXCLUDED.patient_id IS NOT NULL)
     OR (s.patient_name IS NULL AND EXCLUDED.patient_name IS NOT NULL)
     OR (s.accession_number IS NULL AND EXCLUDED.accession_number IS NOT NULL)
     OR (s.study_date IS NULL AND EXCLUDED.study_date IS NOT NULL)
     OR (s.calling_ae IS NULL AND EXCLUDED.calling_ae IS NOT NULL);
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
  RETURN inserted;
END $$;
