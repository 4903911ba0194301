-- Energy, step 1: the readings of the meters in e_meters, checked and deduplicated.
-- In: e_params (one row of settings), e_meters (meter_id, window_from, max_kw, modulus).
-- Out: e_anomalies (dropped readings), e_series (one kept value per meter and instant).

CREATE TEMP TABLE e_input ON COMMIT DROP AS
SELECT r.meter_id, r.reading_at AS ts, r.register_kwh, r.power_w, 'power_w' AS power_field,
       r._file_id AS file_id, r._record_no AS record_no
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
       'channels', s._file_id, s._record_no
FROM {staging}.sensor_readings s
JOIN e_meters m ON m.meter_id = s.device_name
CROSS JOIN e_params p
WHERE s.reading_at >= m.window_from;

CREATE TEMP TABLE e_anomalies (
    meter_id text, ts timestamptz, field text, value text, file_id bigint, record_no bigint, reason text
) ON COMMIT DROP;

INSERT INTO e_anomalies
SELECT meter_id, ts, 'register_kwh', register_kwh::text, file_id, record_no, 'INVALID'
FROM e_input
WHERE register_kwh < 0 OR register_kwh IN ('NaN', 'Infinity', '-Infinity')
UNION ALL
SELECT i.meter_id, i.ts, i.power_field, i.power_w::text, i.file_id, i.record_no,
       CASE WHEN i.power_w IN ('NaN', 'Infinity', '-Infinity') THEN 'INVALID' ELSE 'OUT_OF_RANGE' END
FROM e_input i JOIN e_meters m USING (meter_id)
WHERE i.power_w IN ('NaN', 'Infinity', '-Infinity') OR i.power_w < 0 OR i.power_w > m.max_kw * 1000;

-- A meter with any valid register reading is computed from its register; the others from power.
CREATE TEMP TABLE e_candidates ON COMMIT DROP AS
WITH valid AS (
    SELECT i.meter_id, i.ts, i.file_id, i.record_no,
           CASE WHEN i.register_kwh >= 0 AND i.register_kwh NOT IN ('NaN', 'Infinity')
                THEN i.register_kwh END AS register_kwh,
           CASE WHEN i.power_w BETWEEN 0 AND m.max_kw * 1000 THEN i.power_w END AS power_w
    FROM e_input i JOIN e_meters m USING (meter_id)
), by_register AS (
    SELECT DISTINCT meter_id FROM valid WHERE register_kwh IS NOT NULL
)
SELECT v.meter_id, v.ts, 'register' AS source, v.register_kwh AS v, 'register_kwh' AS field, v.file_id, v.record_no
FROM valid v JOIN by_register USING (meter_id)
WHERE v.register_kwh IS NOT NULL
UNION ALL
SELECT v.meter_id, v.ts, 'power', v.power_w, 'power_w', v.file_id, v.record_no
FROM valid v
WHERE v.power_w IS NOT NULL AND v.meter_id NOT IN (SELECT meter_id FROM by_register);

-- One value per meter and instant: the latest ingest wins; equal copies collapse.
CREATE TEMP TABLE e_ranked ON COMMIT DROP AS
SELECT c.*,
       row_number() OVER w AS rank,
       first_value(v) OVER w AS winner
FROM e_candidates c
WINDOW w AS (PARTITION BY meter_id, ts ORDER BY file_id DESC, record_no DESC);

INSERT INTO e_anomalies
SELECT meter_id, ts, field, v::text, file_id, record_no,
       CASE WHEN v = winner THEN 'DUPLICATE' ELSE 'CONFLICT_SUPERSEDED' END
FROM e_ranked WHERE rank > 1;

CREATE TEMP TABLE e_series ON COMMIT DROP AS
SELECT meter_id, ts, source, v, field, file_id, record_no FROM e_ranked WHERE rank = 1;
