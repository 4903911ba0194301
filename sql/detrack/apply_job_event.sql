-- A job's status and proof of delivery as DeTrack reported it (webhook push or status sync).
-- Applied only when newer than what is stored (an event without a time only when nothing dated
-- is stored), and only when something differs, so the same event twice changes nothing.
-- $1 do_number, $2 date, $3 status, $4 event time, $5 pod_at, $6 received_by, $7 signature_url,
-- $8 photo_urls, $9 failure_reason, $10 delivered, $11 delivered_at.
-- Returns one row: known (the job is loadbay's), applied, stale, delivered (shipments marked).
WITH job AS (
    SELECT do_number, date, shipment_number, detrack_status_at
    FROM {warehouse}.detrack_jobs
    WHERE do_number = $1 AND date = $2
    FOR UPDATE
), applied AS (
    UPDATE {warehouse}.detrack_jobs d
    SET detrack_status = $3, detrack_status_at = $4::timestamptz, pod_at = $5::timestamptz,
        received_by = $6, signature_url = $7, photo_urls = $8::text[], failure_reason = $9,
        updated_at = now()
    FROM job
    WHERE d.do_number = job.do_number AND d.date = job.date
      AND (job.detrack_status_at IS NULL OR $4::timestamptz > job.detrack_status_at)
      AND (d.detrack_status, d.detrack_status_at, d.pod_at, d.received_by, d.signature_url,
           d.photo_urls, d.failure_reason)
          IS DISTINCT FROM ($3::text, $4::timestamptz, $5::timestamptz, $6::text, $7::text,
                            $8::text[], $9::text)
    RETURNING d.shipment_number
), delivered AS (
    UPDATE {warehouse}.fact_shipment f
    SET delivered = true, delivered_at = $11::timestamptz
    FROM applied
    WHERE $10::boolean AND f.shipment_number = applied.shipment_number AND NOT f.delivered
    RETURNING 1
)
SELECT (SELECT count(*) FROM job) AS known,
       (SELECT count(*) FROM applied) AS applied,
       (SELECT count(*) FROM job
        WHERE detrack_status_at IS NOT NULL
          AND ($4::timestamptz IS NULL OR $4::timestamptz <= detrack_status_at)) AS stale,
       (SELECT count(*) FROM delivered) AS delivered
