-- The DISPATCH_SHIP_VIA list ($1) that {warehouse}.eligible_shipments reads (migration 0008).
-- Written by --dispatch and by --analysis before they read the view, so each sees its own list.
INSERT INTO {warehouse}.dispatch_parameters (ship_via) VALUES ($1::text[])
ON CONFLICT (id) DO UPDATE SET ship_via = EXCLUDED.ship_via, updated_at = now()
WHERE {warehouse}.dispatch_parameters.ship_via IS DISTINCT FROM EXCLUDED.ship_via;
