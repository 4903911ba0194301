-- Energy, step 2: isolated outliers out, then every step between consecutive readings
-- classified (NORMAL, NOISE, ROLLOVER, RESET, BREAK) with its energy d and its flags, and the
-- running totals that let step 3 value any half-hour without a join.
-- Out: e_steps, one row per kept reading (the first of each meter has t0 NULL).

CREATE TEMP TABLE e_flagged ON COMMIT DROP AS
WITH neighbours AS (
    SELECT s.*, m.noise, m.max_kw,
           lag(s.v) OVER w AS v_prev, lag(s.ts) OVER w AS t_prev,
           lead(s.v) OVER w AS v_next, lead(s.ts) OVER w AS t_next
    FROM e_series s JOIN e_meters m USING (meter_id)
    WINDOW w AS (PARTITION BY s.meter_id ORDER BY s.ts)
)
SELECT n.*,
       (n.source = 'register' AND p.outlier_filter AND n.v_prev IS NOT NULL AND n.v_next IS NOT NULL
        AND n.v_next - n.v_prev >= -n.noise
        AND n.v_next - n.v_prev <= n.max_kw * extract(epoch FROM n.t_next - n.t_prev) / 3600 + n.noise
        AND (n.v < n.v_prev - n.noise OR n.v > n.v_next + n.noise)) AS outlier
FROM neighbours n CROSS JOIN e_params p;

INSERT INTO e_anomalies
SELECT meter_id, ts, field, v::text, file_id, record_no, 'OUTLIER' FROM e_flagged WHERE outlier;

CREATE TEMP TABLE e_steps ON COMMIT DROP AS
WITH pairs AS (
    SELECT f.meter_id, f.source, f.ts AS t1, f.v AS v1,
           lag(f.ts) OVER w AS t0, lag(f.v) OVER w AS v0,
           m.noise, m.max_kw, m.modulus,
           -- An incremental window starts at a checkpoint: its high-water mark carries over.
           CASE WHEN f.ts = m.window_from THEN m.seed_e END AS seed_e
    FROM e_flagged f JOIN e_meters m USING (meter_id)
    WHERE NOT f.outlier
    WINDOW w AS (PARTITION BY f.meter_id ORDER BY f.ts)
), measured AS (
    SELECT pairs.*,
           extract(epoch FROM t1 - t0) AS dt,
           v1 - v0 AS delta,
           max_kw * extract(epoch FROM t1 - t0) / 3600 + noise AS max_step
    FROM pairs
), classified AS (
    SELECT measured.*,
           CASE WHEN t0 IS NULL OR source = 'power' THEN NULL
                WHEN delta >= 0 AND delta <= max_step THEN 'NORMAL'
                WHEN delta < 0 AND delta >= -noise THEN 'NOISE'
                WHEN delta > max_step THEN 'BREAK'
                WHEN modulus IS NOT NULL AND delta + modulus BETWEEN 0 AND max_step THEN 'ROLLOVER'
                WHEN v1 <= max_step THEN 'RESET'
                ELSE 'BREAK'
           END AS cls
    FROM measured
), counted AS (
    SELECT classified.*,
           count(*) FILTER (WHERE cls IN ('RESET', 'BREAK')) OVER w AS seg,
           count(*) FILTER (WHERE cls = 'ROLLOVER') OVER w AS wraps
    FROM classified
    WINDOW w AS (PARTITION BY meter_id ORDER BY t1 ROWS UNBOUNDED PRECEDING)
), unwrapped AS (
    -- Rollovers count within a segment: subtract the count at the segment's first reading.
    SELECT counted.*,
           v1 + coalesce(modulus, 0) * (wraps - max(CASE WHEN t0 IS NULL OR cls IN ('RESET', 'BREAK')
                                                        THEN wraps END) OVER w) AS u
    FROM counted
    WINDOW w AS (PARTITION BY meter_id ORDER BY t1 ROWS UNBOUNDED PRECEDING)
), marked AS (
    -- The high-water mark within a segment. Segments only grow, so a running maximum of
    -- seg * 1e15 + u never reaches back into an earlier segment.
    SELECT unwrapped.*,
           max(seg * 1e15 + greatest(u, seed_e)) OVER w - seg * 1e15 AS e
    FROM unwrapped
    WINDOW w AS (PARTITION BY meter_id ORDER BY t1 ROWS UNBOUNDED PRECEDING)
), energy AS (
    SELECT marked.*,
           CASE WHEN t0 IS NULL THEN 0
                WHEN source = 'power' THEN dt * (v0 + v1) / 2 / 3600000
                WHEN cls = 'RESET' THEN v1
                WHEN cls = 'BREAK' THEN NULL
                ELSE e - lag(e) OVER w
           END AS d
    FROM marked
    WINDOW w AS (PARTITION BY meter_id ORDER BY t1)
), flagged AS (
    SELECT energy.*,
           t0 IS NULL OR (d IS NOT NULL AND dt <= CASE WHEN source = 'power' THEN p.power_max_step_s
                                                       ELSE p.max_interp_step_s END) AS usable,
           t0 IS NULL OR CASE WHEN source = 'power'
                              THEN dt <= p.power_max_step_s AND p.power_quality = 'ACTUAL'
                              ELSE d IS NOT NULL AND dt <= p.max_actual_step_s
                                   AND cls IN ('NORMAL', 'NOISE', 'ROLLOVER') END AS actual
    FROM energy CROSS JOIN e_params p
)
SELECT meter_id, source, t0, t1, v0, v1, dt, cls, d, usable, actual, e - u + v1 AS e_rel,
       sum(coalesce(d, 0)) OVER w AS cum_d,
       count(*) FILTER (WHERE NOT usable) OVER w AS cum_bad,
       count(*) FILTER (WHERE NOT actual) OVER w AS cum_estimated,
       count(*) FILTER (WHERE cls = 'BREAK') OVER w AS cum_break,
       count(*) FILTER (WHERE cls = 'RESET') OVER w AS cum_reset
FROM flagged
WINDOW w AS (PARTITION BY meter_id ORDER BY t1 ROWS UNBOUNDED PRECEDING);
