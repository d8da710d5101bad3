-- Recording an instance is on the C-STORE hot path: one function call is one
-- round trip (and one implicit transaction) instead of five.
-- Returns true when the instance is new; a new instance marks its study as
-- receiving again (a late instance leads to a re-run), a resend does not.
CREATE FUNCTION firstread.record_instance(
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
  IF inserted THEN
    UPDATE firstread.studies SET last_received_at = now(), assembly_pending = true WHERE study_uid = p_study_uid;
  END IF;
  RETURN inserted;
END $$;
