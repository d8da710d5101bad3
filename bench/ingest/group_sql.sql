-- bench/ingest/group_sql.sh: the SQL of one group commit, per row. pg_temp.run(mode, groups, size, tag)
-- records GROUPS groups of SIZE new instances of one study each (as four senders of one study give) and
-- returns the milliseconds per row: 'new' through firstread.record_instances (migration 0012), 'row'
-- as main's group statement did before it (one record_instance call per unnested row; the caller
-- restores the per-row INSERT trigger for that). Run inside a transaction that is rolled back.
\set ON_ERROR_STOP 1
CREATE OR REPLACE FUNCTION pg_temp.run(p_mode text, p_groups int, p_size int, p_tag text) RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz; g int; ks int[]; sops text[]; n int := p_size; base text;
  a_series text[]; a_study text[]; a_class text[]; a_ts text[]; a_mod text[]; a_null text[]; a_one int[]; a_512 int[];
  a_path text[]; a_size bigint[]; a_ae text[]; a_pid text[]; a_pn text[]; a_acc text[]; a_date text[];
BEGIN
  t0 := clock_timestamp();
  FOR g IN 1..p_groups LOOP
    base := '9.' || p_tag || '.' || g;
    ks := ARRAY(SELECT generate_series(0, n - 1));
    sops := ARRAY(SELECT base || '.' || i FROM generate_series(0, n - 1) i);
    a_series := array_fill('9.' || p_tag || '.1'::text, ARRAY[n]); a_study := array_fill('9.' || p_tag::text, ARRAY[n]);
    a_class := array_fill('1.2.840.10008.5.1.4.1.1.2'::text, ARRAY[n]); a_ts := array_fill('1.2.840.10008.1.2.1'::text, ARRAY[n]);
    a_mod := array_fill('CT'::text, ARRAY[n]); a_null := array_fill(NULL::text, ARRAY[n]); a_one := array_fill(1, ARRAY[n]);
    a_512 := array_fill(512, ARRAY[n]); a_path := ARRAY(SELECT 'instances/x/' || s || '.dcm' FROM unnest(sops) s);
    a_size := array_fill(532000::bigint, ARRAY[n]); a_ae := array_fill('STORESCU'::text, ARRAY[n]);
    a_pid := array_fill('P1'::text, ARRAY[n]); a_pn := array_fill('Doe^J'::text, ARRAY[n]); a_acc := array_fill('A1'::text, ARRAY[n]);
    a_date := array_fill('20200101'::text, ARRAY[n]);
    IF p_mode = 'new' THEN
      PERFORM firstread.record_instances(ks, sops, a_series, a_study, a_class, a_ts, a_mod, a_null, a_one, ks, a_512, a_512,
        a_one, a_path, a_size, a_ae, a_pid, a_pn, a_acc, a_date);
    ELSE
      -- main's group statement: one record_instance call per row of the unnested arrays
      PERFORM r.k, firstread.record_instance(r.sop, r.series, r.study, r.sop_class, r.ts, r.modality, r.body_part,
        r.series_number, r.instance_number, r.n_rows, r.n_columns, r.frames, r.file_path, r.file_size, r.calling_ae,
        r.patient_id, r.patient_name, r.accession_number, r.study_date)
      FROM unnest(ks, sops, a_series, a_study, a_class, a_ts, a_mod, a_null, a_one, ks, a_512, a_512, a_one, a_path,
                  a_size, a_ae, a_pid, a_pn, a_acc, a_date)
        AS r(k, sop, series, study, sop_class, ts, modality, body_part, series_number, instance_number, n_rows,
             n_columns, frames, file_path, file_size, calling_ae, patient_id, patient_name, accession_number, study_date);
    END IF;
  END LOOP;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000 / (p_groups * p_size);
END $$;
