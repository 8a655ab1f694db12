-- Key lifecycle procedures that commit as they go (so they must be CALLed outside a transaction block).

-- Re-wraps every live data key under the active master key, one committed batch at a time: a crash or a
-- cancel loses at most the batch in flight, and CALLing it again resumes where it stopped. Returns the total
-- rewrapped and what is left (remaining > 0 only if rows were locked by other transactions; unknown_master > 0
-- if some keys were wrapped by a master key missing from the ring).
CREATE PROCEDURE event_crypto.rewrap_keys(batch_size integer DEFAULT 1000, INOUT rewrapped bigint DEFAULT NULL,
                                          INOUT remaining bigint DEFAULT NULL, INOUT unknown_master bigint DEFAULT NULL)
    LANGUAGE plpgsql
AS $$
DECLARE
    b record;
BEGIN
    rewrapped := 0;
    LOOP
        SELECT * INTO b FROM event_crypto.rewrap_keys_batch(batch_size);
        rewrapped := rewrapped OPERATOR(pg_catalog.+) b.rewrapped;
        remaining := b.remaining;
        unknown_master := b.unknown_master;
        EXIT WHEN b.rewrapped OPERATOR(pg_catalog.=) 0;
        COMMIT;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE event_crypto.rewrap_keys(integer, bigint, bigint, bigint) IS
    'Re-wraps every live data key under the active master key in committed batches; resumable. CALL outside a transaction block.';
