-- Issue 15 (GSCo): an imported image is in the case library once per specialist,
-- as a confirmed one already is (by its SOP Instance UID in source_ref). Its
-- identity is the SHA-256 of the file's bytes: importing the same directory twice,
-- or the same file under another name or from another directory, finds the case
-- already there (same labels and specialist version: kept; other labels or a
-- retrained specialist: replaced). NULL for confirmed cases and for imports made
-- before this migration (those are not matched).
ALTER TABLE firstread.cases ADD COLUMN image_sha256 text CHECK (image_sha256 ~ '^[0-9a-f]{64}$');
CREATE INDEX cases_by_imported_image ON firstread.cases (specialist, image_sha256) WHERE image_sha256 IS NOT NULL;

-- New columns go at the end: CREATE OR REPLACE keeps the existing ones as they are.
CREATE OR REPLACE VIEW api.cases AS
SELECT case_id, specialist, specialist_version, source, source_ref, report_id, labels, feature_dim, created_at,
       image_sha256
FROM firstread.cases;
