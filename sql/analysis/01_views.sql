-- Analysis views: created or replaced on every --analysis run, safe while the watcher runs.
-- {warehouse} and {staging} are the configured schema names. The run refreshes the settings the
-- views read: ENERGY_SETTLEMENT_TZ in analysis.parameters (migration 0006) and DISPATCH_SHIP_VIA
-- in {warehouse}.dispatch_parameters, which {warehouse}.eligible_shipments reads (migration 0008):
-- "eligible for dispatch" is that view, the same one --dispatch reads.

CREATE OR REPLACE VIEW analysis.shipments_daily AS
SELECT s.scheduled_ship_date AS day,
       count(*) AS shipments,
       count(e.shipment_number) AS on_our_vans,
       count(*) FILTER (WHERE s.delivered) AS delivered,
       coalesce(sum(s.scheduled_ship_quantity), 0) AS scheduled_quantity
FROM {warehouse}.fact_shipment s
LEFT JOIN {warehouse}.eligible_shipments e USING (shipment_number)
GROUP BY s.scheduled_ship_date;

CREATE OR REPLACE VIEW analysis.dispatch_backlog AS
SELECT s.scheduled_ship_date AS day, s.job_number, s.shipment_number, s.ship_city,
       coalesce(j.status, 'not planned') AS outbox_status, j.last_error
FROM {warehouse}.eligible_shipments s
LEFT JOIN {warehouse}.detrack_jobs j USING (shipment_number)
WHERE NOT s.delivered
  AND (j.status IS NULL OR j.status <> 'sent');

CREATE OR REPLACE VIEW analysis.dispatch_outcomes AS
SELECT s.scheduled_ship_date AS day,
       coalesce(j.status, 'not sent') AS outbox_status,
       coalesce(j.detrack_status, '-') AS detrack_status,
       count(*) AS shipments
FROM {warehouse}.eligible_shipments s
LEFT JOIN {warehouse}.detrack_jobs j USING (shipment_number)
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW analysis.delivery_lead_time AS
SELECT s.scheduled_ship_date AS day,
       count(*) AS shipments,
       count(*) FILTER (WHERE s.delivered) AS delivered,
       round(avg(extract(epoch FROM s.delivered_at - s.scheduled_ship_date::timestamp AT TIME ZONE 'UTC')
                 / 3600) FILTER (WHERE s.delivered), 1) AS avg_hours_from_scheduled_date
FROM {warehouse}.fact_shipment s
GROUP BY s.scheduled_ship_date;

CREATE OR REPLACE VIEW analysis.energy_daily AS
SELECT meter_id, settlement_date AS day,
       round(sum(kwh), 3) AS kwh,
       count(*) AS half_hours,
       round(count(*) FILTER (WHERE quality = 'ACTUAL')::numeric / count(*), 3) AS share_actual,
       round(count(*) FILTER (WHERE quality = 'ESTIMATED')::numeric / count(*), 3) AS share_estimated,
       round(count(*) FILTER (WHERE quality = 'MISSING')::numeric / count(*), 3) AS share_missing
FROM {warehouse}.fact_energy_interval
GROUP BY meter_id, settlement_date;

CREATE OR REPLACE VIEW analysis.energy_half_hour_profile AS
SELECT meter_id,
       to_char(interval_start AT TIME ZONE p.settlement_tz, 'HH24:MI') AS local_time,
       round(avg(kwh), 4) AS avg_kwh,
       count(kwh) AS days_measured
FROM {warehouse}.fact_energy_interval CROSS JOIN analysis.parameters p
GROUP BY meter_id, 2;

CREATE OR REPLACE VIEW analysis.ingest_quality AS
SELECT (received_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(dataset, '(unknown)') AS dataset,
       count(*) AS files,
       count(*) FILTER (WHERE status = 'failed') AS failed_files,
       count(*) FILTER (WHERE status = 'duplicate') AS duplicate_files,
       coalesce(sum(rows_loaded), 0) AS rows_loaded,
       coalesce(sum(rows_rejected), 0) AS rows_rejected
FROM ingest.files
GROUP BY 1, 2;
