-- Issue 18: the README's example queries at a million studies (bench/db_scale).
--
-- "SRs not yet in the PACS" filters api.exports.state, a CASE over the
-- table's state. Without statistics on that expression the planner guesses
-- that 99.5 % of the rows match and reads every report in order to join them;
-- with them it finds the few unsent rows through exports_unsent_idx.
CREATE STATISTICS firstread.exports_user_state_stats
  ON ((CASE WHEN state = 'sending' THEN 'pending' ELSE state END)) FROM firstread.exports;
ANALYZE firstread.exports;

-- The same view, with outer joins to reports and report_objects: every export
-- row has its report (report_id NOT NULL REFERENCES reports) and at most one
-- object, so the rows are the same, and a query that reads neither the
-- object nor the SR's UID (as the README's does) no longer joins them.
CREATE OR REPLACE VIEW api.exports AS
SELECT e.export_id, e.report_id, e.destination, CASE WHEN e.state = 'sending' THEN 'pending' ELSE e.state END AS state,
       e.attempts, e.last_error, e.next_attempt_at, e.sent_at,
       COALESCE(o.kind, 'sr') AS object, COALESCE(o.sop_instance_uid, r.sr_sop_instance_uid) AS sop_instance_uid
FROM firstread.exports e LEFT JOIN firstread.reports r USING (report_id)
LEFT JOIN firstread.report_objects o USING (object_id);

-- "CR nodules > 10 mm this week" joins a week of reports (about 17,000 at a
-- million studies) to their studies. PostgreSQL's default random_page_cost (4)
-- models a spinning disk and makes 17,000 primary-key look-ups look dearer
-- than reading all 1,000,000 study rows; on SSD storage and a cached index
-- they are about 5x faster. 1.1 is the usual SSD setting. Set for this
-- database (new sessions; psql users included) where the role may, and on
-- every connection of the service's pool in any case (db/database.cpp).
DO $$
BEGIN
  EXECUTE format('ALTER DATABASE %I SET random_page_cost = 1.1', current_database());
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'random_page_cost left as it is for database %: not its owner', current_database();
END
$$;
