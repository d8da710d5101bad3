-- bench/db_scale: fills a migrated firstread database by SQL to :studies
-- studies in realistic proportions (run by run.sh through psql):
--   instances 1..9 per study (5 on average), modalities CT 30 %, CR 20 %,
--   MR 20 %, DX / US / MG 10 % each, one study every 31.5 s over a year;
--   a job for 10 of 11 studies (the rest unrouted), 1 % dead, 0.5 % failed and
--   waiting, the newest 200 queued / running, the rest done; a report per done
--   job with 2 findings and 1 export (99 % sent); the newest 500 studies still
--   receiving.
-- Triggers and foreign-key checks are off for the load
-- (session_replication_role); firstread.rebuild_summaries() then computes the
-- study rows' state, modalities and counts and the tallies, as the triggers
-- would have.
\set ON_ERROR_STOP on
\timing on
SET session_replication_role = replica;
SET synchronous_commit = off;

-- The study rows carry the summaries the triggers would have kept (the same
-- formulas as the instances and jobs below); rebuild_summaries() checks them.
INSERT INTO firstread.studies (study_uid, patient_id, patient_name, accession_number, study_date, calling_ae,
                               first_received_at, last_received_at, assembly_pending, generation, routed_jobs,
                               modalities, instance_count, state)
SELECT '1.2.826.0.1.3680043.10.77.' || i, 'PID' || (i % 400000), 'Patient^' || (i % 400000), 'ACC' || i,
       to_char(now() - (:studies - i) * interval '31.5 seconds', 'YYYYMMDD'),
       (ARRAY['CT_ROUTER', 'MR_ROUTER', 'PACS'])[1 + i % 3],
       now() - (:studies - i) * interval '31.5 seconds',
       now() - (:studies - i) * interval '31.5 seconds' + interval '2 minutes',
       i > :studies - 500, CASE WHEN i > :studies - 500 THEN 0 ELSE 1 END, CASE WHEN i % 11 = 0 THEN 0 ELSE 1 END,
       ARRAY[(ARRAY['CT', 'CT', 'CT', 'CR', 'CR', 'MR', 'MR', 'DX', 'US', 'MG'])[1 + (i * 7) % 10]], 1 + i % 9,
       CASE WHEN i > :studies - 500 THEN 'receiving' WHEN i % 11 = 0 THEN 'unrouted'
            WHEN i > :studies - 700 THEN (ARRAY['queued', 'processing'])[1 + i % 2]
            WHEN i % 100 = 7 THEN 'failed' WHEN i % 200 = 3 THEN 'queued' ELSE 'reported' END
FROM generate_series(1, :studies) i;

INSERT INTO firstread.instances (sop_instance_uid, series_instance_uid, study_uid, sop_class_uid, transfer_syntax_uid,
                                 modality, series_number, instance_number, rows, columns, frames, file_path, file_size,
                                 calling_ae, received_at)
SELECT st.uid || '.1.' || k, st.uid || '.1', st.uid, '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', st.modality,
       1, k, 512, 512, 1, 'instances/' || st.uid || '/' || st.uid || '.1/' || st.uid || '.1.' || k || '.dcm',
       526000 + k, 'PACS', st.t + k * interval '1 second'
FROM (SELECT i, '1.2.826.0.1.3680043.10.77.' || i AS uid,
             (ARRAY['CT', 'CT', 'CT', 'CR', 'CR', 'MR', 'MR', 'DX', 'US', 'MG'])[1 + (i * 7) % 10] AS modality,
             now() - (:studies - i) * interval '31.5 seconds' AS t
      FROM generate_series(1, :studies) i) st,
     generate_series(1, 1 + st.i % 9) k;

INSERT INTO firstread.jobs (study_uid, generation, route, model, state, attempts, max_attempts, error, created_at,
                            started_at, finished_at, next_attempt_at)
SELECT '1.2.826.0.1.3680043.10.77.' || i, 1, 'default', 'demo',
       CASE WHEN i > :studies - 700 THEN (ARRAY['queued', 'running'])[1 + i % 2]
            WHEN i % 100 = 7 THEN 'dead' WHEN i % 200 = 3 THEN 'failed' ELSE 'done' END,
       CASE WHEN i % 100 = 7 THEN 3 ELSE 1 END, 3,
       CASE WHEN i % 100 = 7 THEN 'pixel data shorter than Rows x Columns promise'
            WHEN i % 200 = 3 THEN 'model crashed' END,
       t + interval '2 minutes 10 seconds', t + interval '2 minutes 11 seconds',
       t + interval '2 minutes 11 seconds' + (5 + i % 55) * interval '1 second', t + interval '3 minutes'
FROM (SELECT i, now() - (:studies - i) * interval '31.5 seconds' AS t FROM generate_series(1, :studies) i) s
WHERE i % 11 <> 0 AND i <= :studies - 500;

INSERT INTO firstread.reports (study_uid, job_id, route, model, model_version, language, text, sr_sop_instance_uid,
                               sr_series_instance_uid, sr_file_path, created_at, latency_ms, decode_ms, inference_ms,
                               sr_ms, db_ms)
SELECT study_uid, job_id, route, model, 'v1-bench', 'en',
       'Findings: a nodule in the right upper lobe. Impression: follow-up CT in 3 months.',
       '1.2.826.0.1.3680043.10.78.' || job_id, '1.2.826.0.1.3680043.10.78.' || job_id || '.0',
       'reports/' || study_uid || '/' || job_id || '.dcm', finished_at,
       extract(epoch FROM finished_at - created_at) * 1000 + 120000, 20, 4000 + job_id % 5000, 15, 4
FROM firstread.jobs WHERE state = 'done';

INSERT INTO firstread.findings (report_id, label, text, sop_instance_uid, frame, x1, y1, x2, y2, confidence)
SELECT r.report_id, (ARRAY['nodule', 'effusion'])[k], NULL, r.study_uid || '.1.1', NULL,
       10 + k * 40, 20 + k * 30, 90 + k * 40, 120 + k * 30, NULL
FROM firstread.reports r, generate_series(1, 2) k;

INSERT INTO firstread.exports (report_id, destination, ae_title, host, port, state, attempts, max_attempts,
                               last_error, next_attempt_at, created_at, sent_at)
SELECT report_id, 'pacs', 'ORTHANC', '127.0.0.1', 4242,
       CASE WHEN report_id % 200 = 1 THEN 'failed' WHEN report_id % 200 = 2 THEN 'pending' ELSE 'sent' END,
       CASE WHEN report_id % 200 = 1 THEN 10 ELSE 1 END, 10,
       CASE WHEN report_id % 200 IN (1, 2) THEN 'association rejected' END, created_at, created_at,
       CASE WHEN report_id % 200 > 2 THEN created_at + interval '1 second' END
FROM firstread.reports;

RESET session_replication_role;
SELECT firstread.rebuild_summaries();
VACUUM ANALYZE;
SELECT (SELECT count(*) FROM firstread.studies) AS studies, (SELECT count(*) FROM firstread.instances) AS instances,
       (SELECT count(*) FROM firstread.jobs) AS jobs, (SELECT count(*) FROM firstread.reports) AS reports,
       (SELECT count(*) FROM firstread.findings) AS findings, (SELECT count(*) FROM firstread.exports) AS exports,
       pg_size_pretty(pg_database_size(current_database())) AS size;
SELECT state, count(*) FROM api.studies GROUP BY state ORDER BY state;
