-- DICOMweb (issue 17): what QIDO-RS and WADO-RS read.
--
-- Every object a viewer can open: the received instances, and the objects
-- firstread made (SRs, presentation states, key images) until they come back
-- through C-STORE or STOW-RS (then they are instances, listed once).
-- rows / columns / frames / instance numbers of firstread's own objects are
-- read from their files when asked for; the SR's SOP class is the one
-- reports/sr_builder writes (dicom/sop_class.h kComprehensive3DSr).
CREATE VIEW firstread.dicomweb_objects AS
SELECT study_uid, series_instance_uid, sop_instance_uid, sop_class_uid, modality, series_number, instance_number,
       rows, columns, frames, file_path
FROM firstread.instances
UNION ALL
SELECT r.study_uid, r.sr_series_instance_uid, r.sr_sop_instance_uid, '1.2.840.10008.5.1.4.1.1.88.34', 'SR',
       NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::integer, r.sr_file_path
FROM firstread.reports r
WHERE NOT EXISTS (SELECT 1 FROM firstread.instances i WHERE i.sop_instance_uid = r.sr_sop_instance_uid)
UNION ALL
SELECT r.study_uid, o.series_instance_uid, o.sop_instance_uid, o.sop_class_uid,
       CASE WHEN o.kind = 'key_image' THEN 'OT' ELSE 'PR' END, NULL::integer, o.instance_number,
       NULL::integer, NULL::integer, CASE WHEN o.kind = 'key_image' THEN 1 END, o.file_path
FROM firstread.report_objects o JOIN firstread.reports r USING (report_id)
WHERE NOT EXISTS (SELECT 1 FROM firstread.instances i WHERE i.sop_instance_uid = o.sop_instance_uid);

-- Modalities of a study's own objects not (yet) among its instances.
CREATE FUNCTION firstread.own_object_modalities(p_study_uid text) RETURNS text[] LANGUAGE sql STABLE AS $$
  SELECT ARRAY(SELECT DISTINCT m FROM (
    SELECT 'SR'::text AS m FROM firstread.reports WHERE study_uid = p_study_uid
    UNION ALL
    SELECT CASE WHEN o.kind = 'key_image' THEN 'OT' ELSE 'PR' END
    FROM firstread.report_objects o JOIN firstread.reports r USING (report_id) WHERE r.study_uid = p_study_uid) own
  ORDER BY 1)
$$;

-- QIDO-RS study matching at 1M studies: each key the viewers filter on reads
-- an index (ModalitiesInStudy: studies_modalities_idx of 0004; the newest-first
-- order: studies_newest_idx). Patient names match case-insensitively with
-- wildcards (prefix LIKE on lower()).
CREATE INDEX studies_patient_id_idx ON firstread.studies (patient_id);
CREATE INDEX studies_patient_name_idx ON firstread.studies (lower(patient_name) text_pattern_ops);
CREATE INDEX studies_study_date_idx ON firstread.studies (study_date);
CREATE INDEX studies_accession_idx ON firstread.studies (accession_number);
-- A study's series and a series' instances without reading other studies' rows.
CREATE INDEX instances_study_series_idx ON firstread.instances (study_uid, series_instance_uid, instance_number);
