-- Shipments that go to DeTrack ({warehouse}.eligible_shipments: our own van and booked on it),
-- with their packages that carry a quantity, and the outbox row each one already has, if any.
SELECT s.shipment_number, s.job_number, s.scheduled_ship_date, s.ship_name, s.ship_address1,
       s.ship_address2, s.ship_address3, s.ship_city, s.ship_state, s.ship_zip, s.ship_country,
       s.ship_contact, s.instructions, s.ship_phone, s.email,
       coalesce(
           (SELECT jsonb_agg(jsonb_build_object('sku', p.package_id, 'description',
                                                coalesce(p.description, p.package_id),
                                                'quantity', p.total_qty_shipped)
                             ORDER BY p.package_id)
            FROM {warehouse}.fact_package p
            WHERE p.shipment_number = s.shipment_number AND p.total_qty_shipped > 0),
           '[]'::jsonb
       )::text AS items,
       j.do_number, j.date AS job_date, j.status, j.action, j.payload_hash, j.assign_to,
       j.detrack_status
FROM {warehouse}.eligible_shipments s
LEFT JOIN {warehouse}.detrack_jobs j USING (shipment_number)
ORDER BY s.scheduled_ship_date NULLS LAST, s.job_number, s.shipment_number;
