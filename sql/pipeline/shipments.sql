-- Shipments: one current row per shipment_number; the most recently ingested version wins
-- (ledger order: file id, then record number). $1: the ledger ids of the files to apply.
-- Delivery state written back from DeTrack (delivered, delivered_at) is never overwritten.
-- The versions left out (superseded, or older than the warehouse's) are counted by left_out.sql.
INSERT INTO {warehouse}.fact_shipment AS f (
    shipment_number, job_number, ship_name, ship_address1, ship_address2, ship_address3, ship_city,
    ship_state, ship_zip, ship_country, ship_contact, instructions, ship_phone, email, ship_via,
    is_partial, shipped, ship_via_service, scheduled_ship_date, scheduled_ship_quantity,
    source_file_id, source_record_no, content_hash
)
SELECT DISTINCT ON (s.shipment_number)
       s.shipment_number, s.job_number, s.ship_name, s.ship_address1, s.ship_address2, s.ship_address3,
       s.ship_city, s.ship_state, s.ship_zip, s.ship_country, s.ship_contact, s.instructions,
       s.ship_phone, s.email, s.ship_via, s.is_partial, s.shipped, s.ship_via_service,
       s.scheduled_ship_date, s.scheduled_ship_quantity, s._file_id, s._record_no,
       md5(row(s.job_number, s.ship_name, s.ship_address1, s.ship_address2, s.ship_address3, s.ship_city,
               s.ship_state, s.ship_zip, s.ship_country, s.ship_contact, s.instructions, s.ship_phone,
               s.email, s.ship_via, s.is_partial, s.shipped, s.ship_via_service, s.scheduled_ship_date,
               s.scheduled_ship_quantity)::text)
FROM {staging}.shipments s
WHERE s._file_id = ANY($1::bigint[])
ORDER BY s.shipment_number, s._file_id DESC, s._record_no DESC
ON CONFLICT (shipment_number) DO UPDATE
SET job_number = EXCLUDED.job_number, ship_name = EXCLUDED.ship_name,
    ship_address1 = EXCLUDED.ship_address1, ship_address2 = EXCLUDED.ship_address2,
    ship_address3 = EXCLUDED.ship_address3, ship_city = EXCLUDED.ship_city,
    ship_state = EXCLUDED.ship_state, ship_zip = EXCLUDED.ship_zip, ship_country = EXCLUDED.ship_country,
    ship_contact = EXCLUDED.ship_contact, instructions = EXCLUDED.instructions,
    ship_phone = EXCLUDED.ship_phone, email = EXCLUDED.email, ship_via = EXCLUDED.ship_via,
    is_partial = EXCLUDED.is_partial, shipped = EXCLUDED.shipped,
    ship_via_service = EXCLUDED.ship_via_service, scheduled_ship_date = EXCLUDED.scheduled_ship_date,
    scheduled_ship_quantity = EXCLUDED.scheduled_ship_quantity,
    source_file_id = EXCLUDED.source_file_id, source_record_no = EXCLUDED.source_record_no,
    content_hash = EXCLUDED.content_hash,
    updated_at = CASE WHEN f.content_hash = EXCLUDED.content_hash THEN f.updated_at ELSE now() END
-- A file that committed late but was dropped earlier never overwrites a newer version.
WHERE (f.source_file_id, f.source_record_no) < (EXCLUDED.source_file_id, EXCLUDED.source_record_no);
