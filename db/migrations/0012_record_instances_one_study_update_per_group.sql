-- A group commit writes each study row once per group (issue 18, ingest CPU).
-- Before, the committer's group statement called record_instance once per row,
-- and each new instance's row trigger updated its study (a new row version, and
-- with last_received_at, new entries in every index of firstread.studies) and
-- appended one tally change: four senders of one study paid four study UPDATEs
-- and four tally rows per group of four.
--
-- Now firstread.record_instances records a group of two or more rows set-wise:
-- the studies upserted once each (in study order, which is the lock order:
-- study row, then instance rows), the instances in one INSERT ... ON CONFLICT
-- (in study, SOP order), then one UPDATE per study (count, modalities and,
-- unless every new instance of that study is one of firstread's own objects
-- coming back from the PACS, last reception and assembly_pending) and one tally
-- change for the group. The row trigger stays for every other insert (one
-- record_instance call, reconciliation, a group of one): a statement trigger
-- with a transition table cost more per single-row insert (measured 0.22-0.27
-- against 0.16-0.26 ms per row). record_instances switches it off for its own
-- INSERT through the transaction-local setting firstread.instances_summarised
-- (reverted at commit, rollback or the end of a failed subtransaction).
-- A group holding the same SOP Instance UID twice (a resend queued behind its
-- first copy) is recorded row by row, in the order given, as before: one INSERT
-- cannot insert and then refresh the same row.

DROP TRIGGER instances_summary_on_insert_delete ON firstread.instances;
CREATE TRIGGER instances_summary_on_delete AFTER DELETE ON firstread.instances
  FOR EACH ROW EXECUTE FUNCTION firstread.instance_row_changed();
CREATE TRIGGER instances_summary_on_insert AFTER INSERT ON firstread.instances FOR EACH ROW
  WHEN (current_setting('firstread.instances_summarised', true) IS DISTINCT FROM 'on')
  EXECUTE FUNCTION firstread.instance_row_changed();

-- The rows of a group, one array per column, in the order the committer sends
-- them (study, then SOP Instance UID); returns each row's key and whether it
-- was new. Empty attributes arrive as NULL.
CREATE FUNCTION firstread.record_instances(
  p_key integer[], p_sop_instance_uid text[], p_series_instance_uid text[], p_study_uid text[],
  p_sop_class_uid text[], p_transfer_syntax_uid text[], p_modality text[], p_body_part text[],
  p_series_number integer[], p_instance_number integer[], p_rows integer[], p_columns integer[],
  p_frames integer[], p_file_path text[], p_file_size bigint[], p_calling_ae text[], p_patient_id text[],
  p_patient_name text[], p_accession_number text[], p_study_date text[])
  RETURNS TABLE (row_key integer, row_is_new boolean) LANGUAGE plpgsql AS $$
BEGIN
  IF cardinality(p_sop_instance_uid) < 2
     OR cardinality(p_sop_instance_uid) <> (SELECT count(DISTINCT u) FROM unnest(p_sop_instance_uid) u) THEN
    RETURN QUERY
    SELECT r.k, firstread.record_instance(r.sop, r.series, r.study, r.sop_class, r.transfer_syntax, r.modality,
      r.body_part, r.series_number, r.instance_number, r.n_rows, r.n_columns, r.frames, r.file_path, r.file_size,
      r.calling_ae, r.patient_id, r.patient_name, r.accession_number, r.study_date)
    FROM unnest(p_key, p_sop_instance_uid, p_series_instance_uid, p_study_uid, p_sop_class_uid,
      p_transfer_syntax_uid, p_modality, p_body_part, p_series_number, p_instance_number, p_rows, p_columns,
      p_frames, p_file_path, p_file_size, p_calling_ae, p_patient_id, p_patient_name, p_accession_number,
      p_study_date)
      AS r(k, sop, series, study, sop_class, transfer_syntax, modality, body_part, series_number,
           instance_number, n_rows, n_columns, frames, file_path, file_size, calling_ae, patient_id, patient_name,
           accession_number, study_date);
    RETURN;
  END IF;
  -- Each study once, with the first value its rows give for each attribute
  -- (what one record_instance call per row, in this order, left).
  INSERT INTO firstread.studies AS s (study_uid, patient_id, patient_name, accession_number, study_date, calling_ae)
  SELECT r.study,
         (array_agg(r.patient_id ORDER BY r.ord) FILTER (WHERE r.patient_id IS NOT NULL))[1],
         (array_agg(r.patient_name ORDER BY r.ord) FILTER (WHERE r.patient_name IS NOT NULL))[1],
         (array_agg(r.accession_number ORDER BY r.ord) FILTER (WHERE r.accession_number IS NOT NULL))[1],
         (array_agg(r.study_date ORDER BY r.ord) FILTER (WHERE r.study_date IS NOT NULL))[1],
         (array_agg(r.calling_ae ORDER BY r.ord) FILTER (WHERE r.calling_ae IS NOT NULL))[1]
  FROM unnest(p_study_uid, p_patient_id, p_patient_name, p_accession_number, p_study_date, p_calling_ae)
         WITH ORDINALITY AS r(study, patient_id, patient_name, accession_number, study_date, calling_ae, ord)
  GROUP BY r.study
  ORDER BY r.study
  -- As record_instance: a known study's missing attributes are filled in, and
  -- it is written only when one of them is (it is locked either way).
  ON CONFLICT (study_uid) DO UPDATE
  SET (patient_id, patient_name, accession_number, study_date, calling_ae) =
      (COALESCE(s.patient_id, EXCLUDED.patient_id), COALESCE(s.patient_name, EXCLUDED.patient_name),
       COALESCE(s.accession_number, EXCLUDED.accession_number), COALESCE(s.study_date, EXCLUDED.study_date),
       COALESCE(s.calling_ae, EXCLUDED.calling_ae))
  WHERE (s.patient_id, s.patient_name, s.accession_number, s.study_date, s.calling_ae) IS DISTINCT FROM
        (COALESCE(s.patient_id, EXCLUDED.patient_id), COALESCE(s.patient_name, EXCLUDED.patient_name),
         COALESCE(s.accession_number, EXCLUDED.accession_number), COALESCE(s.study_date, EXCLUDED.study_date),
         COALESCE(s.calling_ae, EXCLUDED.calling_ae));
  PERFORM set_config('firstread.instances_summarised', 'on', true);
  RETURN QUERY
  WITH written AS (
    INSERT INTO firstread.instances AS i (sop_instance_uid, series_instance_uid, study_uid, sop_class_uid,
      transfer_syntax_uid, modality, body_part, series_number, instance_number, rows, columns, frames, file_path,
      file_size, calling_ae)
    SELECT r.sop, r.series, r.study, r.sop_class, r.transfer_syntax, r.modality, r.body_part, r.series_number,
           r.instance_number, r.n_rows, r.n_columns, r.frames, r.file_path, r.file_size, r.calling_ae
    FROM unnest(p_sop_instance_uid, p_series_instance_uid, p_study_uid, p_sop_class_uid, p_transfer_syntax_uid,
           p_modality, p_body_part, p_series_number, p_instance_number, p_rows, p_columns, p_frames, p_file_path,
           p_file_size, p_calling_ae)
           WITH ORDINALITY AS r(sop, series, study, sop_class, transfer_syntax, modality, body_part, series_number,
                                instance_number, n_rows, n_columns, frames, file_path, file_size, calling_ae, ord)
    ORDER BY r.ord
    ON CONFLICT (sop_instance_uid) DO UPDATE SET series_instance_uid = EXCLUDED.series_instance_uid,
      sop_class_uid = EXCLUDED.sop_class_uid, transfer_syntax_uid = EXCLUDED.transfer_syntax_uid,
      modality = EXCLUDED.modality, body_part = EXCLUDED.body_part, rows = EXCLUDED.rows,
      columns = EXCLUDED.columns, frames = EXCLUDED.frames, file_path = EXCLUDED.file_path,
      file_size = EXCLUDED.file_size, received_at = now()
    RETURNING i.sop_instance_uid, i.study_uid, i.modality, i.file_size, (i.xmax = 0) AS inserted),
  added AS (
    SELECT w.study_uid, count(*)::int AS n,
           COALESCE(array_agg(DISTINCT w.modality) FILTER (WHERE w.modality IS NOT NULL), '{}') AS modalities,
           bool_or(NOT EXISTS (SELECT 1 FROM firstread.reports r WHERE r.sr_sop_instance_uid = w.sop_instance_uid)
                   AND NOT EXISTS (SELECT 1 FROM firstread.report_objects o
                                   WHERE o.sop_instance_uid = w.sop_instance_uid)) AS late
    FROM written w
    WHERE w.inserted
    GROUP BY w.study_uid),
  moved AS (
    UPDATE firstread.studies s
    SET instance_count = s.instance_count + a.n,
        modalities = CASE WHEN a.modalities <@ s.modalities THEN s.modalities
                          ELSE ARRAY(SELECT DISTINCT m FROM unnest(s.modalities || a.modalities) m ORDER BY m) END,
        last_received_at = CASE WHEN a.late THEN now() ELSE s.last_received_at END,
        assembly_pending = s.assembly_pending OR a.late
    FROM added a
    WHERE s.study_uid = a.study_uid
    RETURNING 1),
  tallied AS (
    INSERT INTO firstread.tally_changes (name, key, n, amount)
    SELECT 'instances', '', count(*), sum(w.file_size) FROM written w WHERE w.inserted HAVING count(*) > 0
    RETURNING 1)
  SELECT k.key, w.inserted
  FROM unnest(p_key, p_sop_instance_uid) AS k(key, sop)
  JOIN written w ON w.sop_instance_uid = k.sop;
  PERFORM set_config('firstread.instances_summarised', 'off', true);
END $$;
