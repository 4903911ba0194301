-- What an upsert step leaves out of the warehouse, per file. $1: the ledger ids being applied.
-- {table}, {key}, {fact}: the step's staging table, key column and fact table (constants of
-- services/pipeline.py). Run in the step's transaction, before its upsert, since that changes
-- the fact rows compared against.
--   without_key  rows with no key: they cannot be placed in the fact table
--   superseded   an older version of a key: a later row of the same batch wins (ledger order)
--   older        the batch's latest version is older than the one in the warehouse (a file that
--                committed late), so the upsert's WHERE skips it
WITH batch AS (
    SELECT b._file_id, b._record_no, b.{key} AS key,
           row_number() OVER (PARTITION BY b.{key} ORDER BY b._file_id DESC, b._record_no DESC) AS version
    FROM {staging}.{table} b
    WHERE b._file_id = ANY($1::bigint[])
)
SELECT b._file_id AS file_id,
       count(*) FILTER (WHERE b.key IS NULL) AS without_key,
       count(*) FILTER (WHERE b.key IS NOT NULL AND b.version > 1) AS superseded,
       count(f.source_file_id) AS older
FROM batch b
LEFT JOIN {warehouse}.{fact} f
       ON b.key IS NOT NULL AND b.version = 1 AND f.{key} = b.key
      AND (f.source_file_id, f.source_record_no) > (b._file_id, b._record_no)
GROUP BY b._file_id
HAVING count(*) FILTER (WHERE b.key IS NULL OR b.version > 1) + count(f.source_file_id) > 0
ORDER BY b._file_id;
