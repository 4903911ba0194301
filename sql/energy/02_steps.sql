-- Energy, step 2: isolated outliers out, then every step between consecutive readings
-- classified (NORMAL, NOISE, ROLLOVER, RESET, BREAK) with its energy d and its flags, and the
-- running totals that let step 3 value any half-hour without a join.
-- Out: e_steps, one row per kept reading (the first of each meter has t0 NULL).

-- Only the outliers are kept here (a handful): the steps below read the ranked readings again
-- rather than a million-row copy.
CREATE TEMP TABLE e_outliers ON COMMIT DROP AS
WITH neighbours AS (
    SELECT s.*, m.noise, m.max_kw,
           lag(s.v) OVER w AS v_prev, lag(s.ts) OVER w AS t_prev,
           lead(s.v) OVER w AS v_next, lead(s.ts) OVER w AS t_next
    FROM e_ranked s JOIN e_meters m USING (meter_id)
    WHERE s.valid AND s.rank = 1
    WINDOW w AS (PARTITION BY s.meter_id ORDER BY s.ts)
)
SELECT n.meter_id, n.ts, n.field, n.v, n.file_id, n.record_no
FROM neighbours n CROSS JOIN e_params p
WHERE n.source = 'register' AND p.outlier_filter AND n.v_prev IS NOT NULL AND n.v_next IS NOT NULL
  AND n.v_next - n.v_prev >= -n.noise
  AND n.v_next - n.v_prev <= n.max_kw * extract(epoch FROM n.t_next - n.t_prev) / 3600 + n.noise
  AND (n.v < n.v_prev - n.noise OR n.v > n.v_next + n.noise);

INSERT INTO e_anomalies
SELECT meter_id, ts, field, v::text, file_id, record_no, 'OUTLIER' FROM e_outliers;

CREATE TEMP TABLE e_steps ON COMMIT DROP AS
WITH pairs AS (
    -- Each expression here is computed once a row by the window node; later levels read it.
    SELECT f.meter_id, f.source, f.ts AS t1, f.v AS v1,
           lag(f.ts) OVER w AS t0, lag(f.v) OVER w AS v0,
           -- Seconds as double precision: exact to the microsecond, far cheaper than numeric.
           date_part('epoch', f.ts - lag(f.ts) OVER w) AS dt,
           coalesce(m.modulus, 0) AS modulus,
           -- An incremental window starts at a checkpoint: its high-water mark carries over.
           CASE WHEN f.ts = m.window_from THEN m.seed_e END AS seed_e,
           CASE WHEN lag(f.ts) OVER w IS NULL OR f.source = 'power' THEN NULL
                WHEN f.v - lag(f.v) OVER w >= 0
                     AND f.v - lag(f.v) OVER w <= m.max_kw * extract(epoch FROM f.ts - lag(f.ts) OVER w)
                                                  / 3600 + m.noise THEN 'NORMAL'
                WHEN f.v - lag(f.v) OVER w < 0 AND f.v - lag(f.v) OVER w >= -m.noise THEN 'NOISE'
                WHEN f.v - lag(f.v) OVER w > 0 THEN 'BREAK'  -- more than the meter can use
                WHEN m.modulus IS NOT NULL
                     AND f.v - lag(f.v) OVER w + m.modulus
                         BETWEEN 0 AND m.max_kw * extract(epoch FROM f.ts - lag(f.ts) OVER w)
                                       / 3600 + m.noise THEN 'ROLLOVER'
                WHEN f.v <= m.max_kw * extract(epoch FROM f.ts - lag(f.ts) OVER w) / 3600 + m.noise
                     THEN 'RESET'
                ELSE 'BREAK'
           END AS cls
    FROM e_ranked f JOIN e_meters m USING (meter_id)
    WHERE f.valid AND f.rank = 1
      AND NOT EXISTS (SELECT 1 FROM e_outliers o WHERE o.meter_id = f.meter_id AND o.ts = f.ts)
    WINDOW w AS (PARTITION BY f.meter_id ORDER BY f.ts)
), limits AS (
    SELECT pairs.*,
           -- usable: the energy is known and the step short enough to apportion;
           -- actual: usable, a plain step, and short enough to count as measured.
           t0 IS NULL OR (cls IS DISTINCT FROM 'BREAK'
                          AND dt <= CASE WHEN source = 'power' THEN (SELECT power_max_step_s FROM e_params)
                                         ELSE (SELECT max_interp_step_s FROM e_params) END) AS usable,
           t0 IS NULL OR CASE WHEN source = 'power'
                              THEN dt <= (SELECT power_max_step_s FROM e_params)
                                   AND (SELECT power_quality = 'ACTUAL' FROM e_params)
                              ELSE dt <= (SELECT max_actual_step_s FROM e_params)
                                   AND cls IN ('NORMAL', 'NOISE', 'ROLLOVER') END AS actual
    FROM pairs
), counted AS (
    SELECT limits.*,
           count(*) FILTER (WHERE cls IN ('RESET', 'BREAK')) OVER w AS seg,
           count(*) FILTER (WHERE cls = 'ROLLOVER') OVER w AS wraps,
           count(*) FILTER (WHERE NOT usable) OVER w AS cum_bad,
           count(*) FILTER (WHERE NOT actual) OVER w AS cum_estimated,
           count(*) FILTER (WHERE cls = 'BREAK') OVER w AS cum_break,
           count(*) FILTER (WHERE cls = 'RESET') OVER w AS cum_reset
    FROM limits
    WINDOW w AS (PARTITION BY meter_id ORDER BY t1 ROWS UNBOUNDED PRECEDING)
), energy AS (
    -- Within a segment, u = v + modulus x (rollovers since the segment began) and the
    -- high-water mark e is the running maximum of u. Segments only grow, so a running maximum
    -- x of seg x 1e15 + v + modulus x rollovers never reaches back into an earlier segment, and
    -- the rollovers before the segment are a constant within it: e = x - seg x 1e15 - modulus x
    -- (rollovers before the segment). So e_rel = e - modulus x (rollovers within the segment)
    -- is x - seg x 1e15 - modulus x rollovers, and the energy of a plain step, e - e of the
    -- reading before (always in the same segment), is x - x of the reading before: a frame
    -- that stops one row short gives that in this level, with no lag(e) level above it.
    SELECT meter_id, source, t0, t1, v0, v1, dt, cls, usable, actual,
           cum_bad, cum_estimated, cum_break, cum_reset,
           max(seg * 1e15 + modulus * wraps + greatest(v1, seed_e)) OVER w - seg * 1e15 - modulus * wraps AS e_rel,
           CASE WHEN t0 IS NULL THEN 0
                WHEN source = 'power' THEN dt::numeric * (v0 + v1) / 2 / 3600000
                WHEN cls = 'RESET' THEN v1
                WHEN cls = 'BREAK' THEN NULL
                ELSE max(seg * 1e15 + modulus * wraps + greatest(v1, seed_e)) OVER w
                     - max(seg * 1e15 + modulus * wraps + greatest(v1, seed_e)) OVER before
           END AS d
    FROM counted
    WINDOW w AS (PARTITION BY meter_id ORDER BY t1 ROWS UNBOUNDED PRECEDING),
           before AS (PARTITION BY meter_id ORDER BY t1 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
SELECT energy.*,
       sum(coalesce(d, 0)) OVER w AS cum_d,
       -- The last reading of each UTC day: where later incremental runs may start. (date_bin on
       -- a UTC midnight is the UTC day without a time zone lookup per row: 0.4 s less per 1M.)
       date_bin('1 day', t1, timestamptz '2000-01-01 00:00+00')
           IS DISTINCT FROM date_bin('1 day', lead(t1) OVER w, timestamptz '2000-01-01 00:00+00') AS day_end
FROM energy
WINDOW w AS (PARTITION BY meter_id ORDER BY t1 ROWS UNBOUNDED PRECEDING);
