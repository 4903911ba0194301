-- Energy, step 4: write the results for the meters in e_meters, from each meter's emit_from on.
-- In: e_result, e_gaps, e_anomalies, e_checkpoints, from steps 1-3 or from the numpy route
-- (services/energy/rules.py), which fills the same tables.
-- Rows whose values did not change are left as they are, so a recompute is idempotent.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM e_result WHERE kwh < 0) THEN
        RAISE EXCEPTION 'a negative half-hour kWh was computed; nothing was written'
            USING HINT = 'This is a bug in the energy rules; please report it with the meter id';
    END IF;
END
$$;

-- The facts each meter has from its emit_from on, read by primary-key range: every statement
-- below meets these few rows instead of hashing the whole fact table (a new day for 100 meters
-- compares 13,000 half-hours; the table holds 333,000 and grows every day).
CREATE TEMP TABLE e_existing ON COMMIT DROP AS
SELECT f.meter_id, f.interval_start, f.kwh, f.quality, f.source, f.settlement_date, f.settlement_period,
       f.method_version
FROM e_meters m
JOIN {warehouse}.fact_energy_interval f ON f.meter_id = m.meter_id AND f.interval_start >= m.emit_from;

ANALYZE e_existing;
-- The planner's row counts for e_result: with them the joins below take the right shape.
ANALYZE e_result;

DELETE FROM {warehouse}.fact_energy_interval f
USING e_existing x
WHERE f.meter_id = x.meter_id AND f.interval_start = x.interval_start
  AND NOT EXISTS (
      SELECT 1 FROM e_result r WHERE r.meter_id = x.meter_id AND r.interval_start = x.interval_start
  );

-- Changed rows are updated and new rows inserted, in key order: a plain INSERT costs half of
-- an INSERT ... ON CONFLICT, and only one pipeline runs at a time, its workers on disjoint meters.
CREATE TEMP TABLE e_changed ON COMMIT DROP AS
SELECT r.*
FROM e_result r
JOIN e_existing x USING (meter_id, interval_start)
CROSS JOIN e_params p
WHERE (x.kwh, x.quality, x.source, x.settlement_date, x.settlement_period, x.method_version)
      IS DISTINCT FROM
      (r.kwh, r.quality, r.source, r.settlement_date, r.settlement_period, p.method_version);

ANALYZE e_changed;

UPDATE {warehouse}.fact_energy_interval AS f
SET kwh = c.kwh, quality = c.quality, source = c.source, settlement_date = c.settlement_date,
    settlement_period = c.settlement_period, method_version = p.method_version, computed_at = now()
FROM e_changed c
CROSS JOIN e_params p
WHERE f.meter_id = c.meter_id AND f.interval_start = c.interval_start;

INSERT INTO {warehouse}.fact_energy_interval
    (meter_id, interval_start, interval_end, kwh, quality, source, settlement_date, settlement_period,
     method_version)
SELECT r.meter_id, r.interval_start, r.interval_end, r.kwh, r.quality, r.source, r.settlement_date,
       r.settlement_period, p.method_version
FROM e_result r
JOIN e_meters m USING (meter_id)
CROSS JOIN e_params p
WHERE r.interval_start >= m.emit_from
  AND NOT EXISTS (
      SELECT 1 FROM e_existing x WHERE x.meter_id = r.meter_id AND x.interval_start = r.interval_start
  )
ORDER BY r.meter_id, r.interval_start;

DELETE FROM {warehouse}.energy_gaps g
USING e_meters m
WHERE g.meter_id = m.meter_id AND g.gap_end > m.emit_from
  AND NOT EXISTS (
      SELECT 1 FROM e_gaps n
      WHERE n.meter_id = g.meter_id AND n.gap_start = g.gap_start AND n.gap_end = g.gap_end
        AND n.kwh IS NOT DISTINCT FROM g.kwh AND n.reason = g.reason
  );

INSERT INTO {warehouse}.energy_gaps (meter_id, gap_start, gap_end, kwh, reason)
SELECT n.meter_id, n.gap_start, n.gap_end, n.kwh, n.reason
FROM e_gaps n JOIN e_meters m USING (meter_id)
WHERE n.gap_end > m.emit_from
ON CONFLICT (meter_id, gap_start) DO NOTHING;

DELETE FROM {warehouse}.reading_anomalies a
USING e_meters m
WHERE a.meter_id = m.meter_id AND a.ts >= m.window_from
  AND NOT EXISTS (
      SELECT 1 FROM e_anomalies n
      WHERE (n.meter_id, n.ts, n.file_id, n.record_no, n.field, n.reason)
            = (a.meter_id, a.ts, a.file_id, a.record_no, a.field, a.reason)
  );

INSERT INTO {warehouse}.reading_anomalies
    (meter_id, ts, field, value, file_id, record_no, ingest_seq, reason)
SELECT meter_id, ts, field, value, file_id, record_no, file_id || ':' || record_no, reason
FROM e_anomalies
ON CONFLICT (meter_id, ts, file_id, record_no, field) DO UPDATE
SET value = EXCLUDED.value, reason = EXCLUDED.reason, computed_at = now()
WHERE (reading_anomalies.value, reading_anomalies.reason) IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.reason);

-- Checkpoints for later incremental runs (e_checkpoints: see the end of step 3).
DELETE FROM {warehouse}.energy_checkpoints c
USING e_meters m
WHERE c.meter_id = m.meter_id AND c.ts >= m.window_from;

INSERT INTO {warehouse}.energy_checkpoints (meter_id, ts, source, v, e_rel)
SELECT meter_id, ts, source, v, e_rel FROM e_checkpoints;
