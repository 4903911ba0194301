-- Energy, step 3: half-hours. The energy consumed up to instant b is a running total that is
-- linear within each register step (trapezoidal within each power step); a half-hour's kWh is
-- its value at the end minus its value at the start. Which steps a half-hour overlaps, and so
-- its quality, follows from the running counts of step flags at both ends.
-- Out: e_intervals (every half-hour overlapping (first reading, last reading) of each meter).

CREATE TEMP TABLE e_points ON COMMIT DROP AS
-- A meter's first reading, when it falls on a boundary.
SELECT meter_id, source, t1 AS b, 0::numeric AS c,
       0::bigint AS bad_before, 0::bigint AS bad_through,
       0::bigint AS est_before, 0::bigint AS est_through,
       0::bigint AS brk_before, 0::bigint AS brk_through,
       0::bigint AS rst_before, 0::bigint AS rst_through
FROM e_steps
WHERE t0 IS NULL AND t1 = date_bin('30 minutes', t1, timestamptz '2000-01-01 00:00+00')
UNION ALL
-- Every boundary b with t0 < b <= t1 of a step.
SELECT s.meter_id, s.source, g.b,
       s.cum_d - coalesce(s.d, 0) + CASE
           WHEN s.d IS NULL THEN 0
           WHEN s.source = 'power' THEN
               -- Trapezoid from t0 to b on power interpolated linearly within the step.
               extract(epoch FROM g.b - s.t0)
               * (2 * s.v0 + (s.v1 - s.v0) * extract(epoch FROM g.b - s.t0) / s.dt::numeric) / 2 / 3600000
           ELSE s.d * extract(epoch FROM g.b - s.t0) / s.dt::numeric
       END,
       s.cum_bad - CASE WHEN g.b < s.t1 AND NOT s.usable THEN 1 ELSE 0 END,
       s.cum_bad,
       s.cum_estimated - CASE WHEN g.b < s.t1 AND NOT s.actual THEN 1 ELSE 0 END,
       s.cum_estimated,
       s.cum_break - CASE WHEN g.b < s.t1 AND s.cls = 'BREAK' THEN 1 ELSE 0 END,
       s.cum_break,
       s.cum_reset - CASE WHEN g.b < s.t1 AND s.cls = 'RESET' THEN 1 ELSE 0 END,
       s.cum_reset
FROM e_steps s
CROSS JOIN LATERAL generate_series(
    date_bin('30 minutes', s.t0, timestamptz '2000-01-01 00:00+00') + interval '30 minutes',
    s.t1,
    interval '30 minutes'
) AS g(b)
WHERE s.t0 IS NOT NULL
  AND date_bin('30 minutes', s.t1, timestamptz '2000-01-01 00:00+00') > s.t0;

CREATE TEMP TABLE e_intervals ON COMMIT DROP AS
WITH spans AS (
    SELECT p.*,
           lead(b) OVER w AS e, lead(c) OVER w AS c_end,
           lead(bad_through) OVER w AS bad_end, lead(est_through) OVER w AS est_end,
           lead(brk_through) OVER w AS brk_end, lead(rst_through) OVER w AS rst_end
    FROM e_points p
    WINDOW w AS (PARTITION BY meter_id ORDER BY b)
)
SELECT meter_id, source, b AS interval_start, true AS covered,
       c_end - c AS kwh_raw,
       bad_end - bad_before AS bad,
       est_end - est_before AS estimated,
       brk_end - brk_before AS breaks,
       rst_end - rst_before AS resets
FROM spans
WHERE e IS NOT NULL
UNION ALL
-- The half-hours at either edge, only partly covered by readings: MISSING until more arrive.
-- They never coincide with a span above (spans run between boundaries inside the readings);
-- DISTINCT merges the two edges of a meter whose readings all fall in one half-hour.
SELECT DISTINCT meter_id, source, date_bin('30 minutes', t, timestamptz '2000-01-01 00:00+00'), false,
       NULL::numeric, 1, 0, 0, 0
FROM (
    SELECT meter_id, source, min(t1) AS first_t, max(t1) AS last_t, count(*) AS readings
    FROM e_steps GROUP BY meter_id, source
) edges
CROSS JOIN LATERAL (VALUES (first_t), (last_t)) AS v(t)
WHERE readings > 1 AND t <> date_bin('30 minutes', t, timestamptz '2000-01-01 00:00+00');

CREATE TEMP TABLE e_result ON COMMIT DROP AS
SELECT i.meter_id, i.interval_start, i.interval_start + interval '30 minutes' AS interval_end,
       CASE WHEN i.bad = 0 THEN round(i.kwh_raw, 6) END AS kwh,
       CASE WHEN i.bad > 0 THEN 'MISSING' WHEN i.estimated > 0 THEN 'ESTIMATED' ELSE 'ACTUAL' END AS quality,
       i.source,
       (i.interval_start AT TIME ZONE p.settlement_tz)::date AS settlement_date,
       (1 + extract(epoch FROM i.interval_start
                    - ((i.interval_start AT TIME ZONE p.settlement_tz)::date::timestamp
                       AT TIME ZONE p.settlement_tz)) / 1800)::smallint AS settlement_period,
       i.covered, i.kwh_raw, i.breaks, i.resets, i.bad
FROM e_intervals i CROSS JOIN e_params p;

-- Gap records: maximal runs of fully covered MISSING half-hours, with the energy known over
-- the run (so that interval kWh plus gap kWh reconcile with the register).
CREATE TEMP TABLE e_gaps ON COMMIT DROP AS
WITH missing AS (
    SELECT r.*,
           extract(epoch FROM interval_start)::bigint / 1800
           - row_number() OVER (PARTITION BY meter_id ORDER BY interval_start) AS run
    FROM e_result r
    WHERE covered AND quality = 'MISSING'
)
SELECT meter_id, min(interval_start) AS gap_start, max(interval_end) AS gap_end,
       CASE WHEN bool_or(source = 'power') OR sum(breaks) > 0 THEN NULL
            ELSE round(sum(kwh_raw), 6) END AS kwh,
       CASE WHEN sum(breaks) > 0 THEN 'BREAK'
            WHEN sum(resets) > 0 THEN 'GAP_RESET_LOWER_BOUND'
            ELSE 'GAP' END AS reason
FROM missing
GROUP BY meter_id, run;

-- Checkpoints for later incremental runs: the last reading of each UTC day, when its incoming
-- step was a plain one (not a reset, break or long gap), with the high-water mark there.
CREATE TEMP TABLE e_checkpoints ON COMMIT DROP AS
SELECT meter_id, t1 AS ts, source, v1 AS v, e_rel
FROM e_steps
WHERE day_end AND (t0 IS NULL OR (usable AND (source = 'power' OR cls IN ('NORMAL', 'NOISE', 'ROLLOVER'))));
