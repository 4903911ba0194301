-- Packages: one current row per package_id, the most recently ingested version winning.
-- $1: the ledger ids of the files to apply. Rows without a package_id cannot be keyed: they are
-- left out, counted in the step's summary and in ingest.error_log (see left_out.sql).
INSERT INTO {warehouse}.fact_package AS f (
    package_id, shipment_number, job_number, total_qty_shipped, description,
    source_file_id, source_record_no, content_hash
)
SELECT DISTINCT ON (p.package_id)
       p.package_id, p.shipment_number, p.job_number, p.total_qty_shipped, p.description,
       p._file_id, p._record_no,
       md5(row(p.shipment_number, p.job_number, p.total_qty_shipped, p.description)::text)
FROM {staging}.packages p
WHERE p._file_id = ANY($1::bigint[]) AND p.package_id IS NOT NULL
ORDER BY p.package_id, p._file_id DESC, p._record_no DESC
ON CONFLICT (package_id) DO UPDATE
SET shipment_number = EXCLUDED.shipment_number, job_number = EXCLUDED.job_number,
    total_qty_shipped = EXCLUDED.total_qty_shipped, description = EXCLUDED.description,
    source_file_id = EXCLUDED.source_file_id, source_record_no = EXCLUDED.source_record_no,
    content_hash = EXCLUDED.content_hash,
    updated_at = CASE WHEN f.content_hash = EXCLUDED.content_hash THEN f.updated_at ELSE now() END
WHERE (f.source_file_id, f.source_record_no) < (EXCLUDED.source_file_id, EXCLUDED.source_record_no);
