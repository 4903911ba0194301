-- Energy, step 1: the readings of the meters in e_meters, checked and deduplicated.
-- In: e_params (one row of settings), e_meters (meter_id, window_from, max_kw, modulus).
-- Out: e_anomalies (dropped readings), e_ranked (every reading of the chosen series, ranked
-- within its instant; the kept ones are `valid AND rank = 1`).

CREATE TEMP TABLE e_input ON COMMIT DROP AS
SELECT i.*,
       i.register_kwh >= 0 AND i.register_kwh NOT IN ('NaN', 'Infinity') AS register_ok,
       i.power_w BETWEEN 0 AND i.max_kw * 1000 AS power_ok
FROM (
-- Each reading meets its meter's row once, here (a second join for max_kw cost 0.1 s per 1M).
SELECT r.meter_id, r.reading_at AS ts, r.register_kwh, r.power_w, 'power_w' AS power_field,
       r._file_id AS file_id, r._record_no AS record_no, m.max_kw
FROM {staging}.meter_readings r
JOIN e_meters m USING (meter_id)
WHERE r.reading_at >= m.window_from
UNION ALL
-- Sensors measure current: power = voltage x power factor x the sum of the channels.
SELECT s.device_name, s.reading_at, NULL,
       CASE WHEN least(s.channel1_a, s.channel2_a, s.channel3_a) < 0
              OR num_nonnulls(s.channel1_a, s.channel2_a, s.channel3_a) = 0
            THEN 'NaN'::numeric
            ELSE p.sensor_voltage * p.sensor_power_factor
                 * (coalesce(s.channel1_a, 0) + coalesce(s.channel2_a, 0) + coalesce(s.channel3_a, 0))
       END,
       'channels', s._file_id, s._record_no, m.max_kw
FROM {staging}.sensor_readings s
JOIN e_meters m ON m.meter_id = s.device_name
CROSS JOIN e_params p
WHERE s.reading_at >= m.window_from
) i;

CREATE TEMP TABLE e_anomalies (
    meter_id text, ts timestamptz, field text, value text, file_id bigint, record_no bigint, reason text
) ON COMMIT DROP;

INSERT INTO e_anomalies
SELECT meter_id, ts, 'register_kwh', register_kwh::text, file_id, record_no, 'INVALID'
FROM e_input
WHERE register_kwh IS NOT NULL AND NOT register_ok
UNION ALL
SELECT meter_id, ts, power_field, power_w::text, file_id, record_no,
       CASE WHEN power_w IN ('NaN', 'Infinity', '-Infinity') THEN 'INVALID' ELSE 'OUT_OF_RANGE' END
FROM e_input
WHERE power_w IS NOT NULL AND NOT power_ok;

-- A meter with any valid register reading is computed from its register; the others from power.
-- Within one instant the latest ingest wins (valid values first); equal copies collapse.
CREATE TEMP TABLE e_ranked ON COMMIT DROP AS
WITH by_register AS (
    SELECT meter_id, coalesce(bool_or(register_ok), false) AS register
    FROM e_input GROUP BY meter_id
), chosen AS (
    SELECT i.meter_id, i.ts, i.file_id, i.record_no,
           CASE WHEN b.register THEN 'register' ELSE 'power' END AS source,
           CASE WHEN b.register THEN i.register_kwh ELSE i.power_w END AS v,
           CASE WHEN b.register THEN 'register_kwh' ELSE i.power_field END AS field,
           coalesce(CASE WHEN b.register THEN i.register_ok ELSE i.power_ok END, false) AS valid
    FROM e_input i JOIN by_register b USING (meter_id)
)
SELECT chosen.*, row_number() OVER w AS rank, first_value(v) OVER w AS winner
FROM chosen
WINDOW w AS (PARTITION BY meter_id, ts ORDER BY valid DESC, file_id DESC, record_no DESC);

INSERT INTO e_anomalies
SELECT meter_id, ts, field, v::text, file_id, record_no,
       CASE WHEN v = winner THEN 'DUPLICATE' ELSE 'CONFLICT_SUPERSEDED' END
FROM e_ranked WHERE valid AND rank > 1;
