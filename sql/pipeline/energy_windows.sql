-- The meters touched by new files ($1: ledger ids) and where each one's recompute starts: the
-- latest checkpoint at least a day before its earliest new reading (so that the outlier test
-- and the step before the new readings are recomputed too), or the meter's first reading.
WITH new_readings AS (
    SELECT meter_id, min(reading_at) AS earliest
    FROM {staging}.meter_readings WHERE _file_id = ANY($1::bigint[]) GROUP BY meter_id
    UNION ALL
    SELECT device_name, min(reading_at)
    FROM {staging}.sensor_readings WHERE _file_id = ANY($1::bigint[]) GROUP BY device_name
), touched AS (
    SELECT meter_id, min(earliest) AS earliest FROM new_readings GROUP BY meter_id
)
SELECT t.meter_id, c.ts AS checkpoint_ts, c.e_rel
FROM touched t
LEFT JOIN LATERAL (
    SELECT ts, e_rel FROM {warehouse}.energy_checkpoints c
    WHERE c.meter_id = t.meter_id AND c.ts < t.earliest - interval '1 day'
    ORDER BY ts DESC LIMIT 1
) c ON true
ORDER BY t.meter_id;
