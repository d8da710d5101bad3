-- Issue 14: which backend produced a report (local engine or an OpenAI-compatible
-- server), the model id the server answered with, its token usage, and whether
-- the text stopped at the token limit (finish_reason "length").
ALTER TABLE firstread.reports
  ADD COLUMN backend           text NOT NULL DEFAULT 'local',
  ADD COLUMN served_model      text,
  ADD COLUMN prompt_tokens     integer,
  ADD COLUMN completion_tokens integer,
  ADD COLUMN truncated         boolean NOT NULL DEFAULT false;

-- New columns go at the end: CREATE OR REPLACE keeps the existing ones as they are.
CREATE OR REPLACE VIEW api.reports AS
SELECT report_id, study_uid, job_id, route, model, model_version, language, text, sr_sop_instance_uid,
       sr_file_path, supersedes_report_id, created_at, latency_ms, decode_ms, inference_ms, sr_ms, db_ms,
       backend, served_model, prompt_tokens, completion_tokens, truncated
FROM firstread.reports;
