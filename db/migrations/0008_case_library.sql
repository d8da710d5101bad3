-- Issue 15 (GSCo): the case library that Retrieval-Augmented Diagnosis searches.
-- One row per image and specialist: the labels a radiologist gave it (an imported
-- file with its labels.csv row, or the images of a confirmed report) and the
-- specialist's pooled feature (CLS after the final LayerNorm, L2-normalised) as
-- float32 little-endian bytes. Every node builds its FAISS index from these rows
-- and follows new ones by case_id, so the database is the truth.
CREATE TABLE firstread.cases (
  case_id          bigserial PRIMARY KEY,
  specialist       text NOT NULL,
  specialist_version text NOT NULL,      -- digest of the specialist's weights the feature came from
  source           text NOT NULL CHECK (source IN ('import', 'confirmed')),
  source_ref       text NOT NULL,        -- import: the file as labels.csv names it; confirmed: the SOP Instance UID
  report_id        bigint REFERENCES firstread.reports (report_id),
  labels           text[] NOT NULL CHECK (cardinality(labels) > 0),
  feature_dim      integer NOT NULL CHECK (feature_dim > 0),
  feature          bytea NOT NULL CHECK (length(feature) = 4 * feature_dim),
  created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cases_by_specialist ON firstread.cases (specialist, case_id);

CREATE VIEW api.cases AS
SELECT case_id, specialist, specialist_version, source, source_ref, report_id, labels, feature_dim, created_at
FROM firstread.cases;

-- The prompt the generalist was given (the route's prompt with GSCo's sentences)
-- and what the specialists said and how many cases were retrieved, per image.
ALTER TABLE firstread.reports
  ADD COLUMN prompt text,
  ADD COLUMN gsco   jsonb;

-- New columns go at the end: CREATE OR REPLACE keeps the existing ones as they are.
CREATE OR REPLACE VIEW api.reports AS
SELECT report_id, study_uid, job_id, route, model, model_version, language, text, sr_sop_instance_uid,
       sr_file_path, supersedes_report_id, created_at, latency_ms, decode_ms, inference_ms, sr_ms, db_ms,
       backend, served_model, prompt_tokens, completion_tokens, truncated, prompt, gsco
FROM firstread.reports;
