-- +goose Up

-- Auditor SQL access (docs/audit.md): read-only views over the credit
-- postings of the event log, for the mana_auditor role only. They are
-- SECURITY INVOKER (security_invoker views, an invoker function), so they
-- grant nothing by themselves: whoever queries them needs SELECT on events
-- too, which mana_auditor holds. The events table carries no row-level
-- security, so every role sees the same rows.

-- ledger_entries: one row per posting of every credit.* event, in the
-- order of the feed (ORDER BY tx_id, position, leg). cursor is the event's
-- feed cursor "<tx_id>-<position>"; leg numbers the postings of one event
-- from 1, so (event_id, leg) identifies a row. amount is signed: positive
-- increases the account. An event whose payload has no postings array
-- contributes no rows (mana ledger verify reports it).
CREATE VIEW ledger_entries WITH (security_invoker = true) AS
SELECT (e.tx_id::text || '-' || e.position::text)::text AS cursor,
       e.tx_id,
       e.position,
       e.event_id,
       e.event_type,
       e.stream_type,
       e.stream_id,
       e.stream_version,
       e.occurred_at,
       p.leg::bigint AS leg,
       (p.posting ->> 'account')::text AS account,
       (p.posting ->> 'amount')::bigint AS amount
FROM events e
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(e.payload -> 'postings') = 'array' THEN e.payload -> 'postings' END
) WITH ORDINALITY AS p (posting, leg)
WHERE e.event_type LIKE 'credit.%';

-- trial_balance: the balance of every ledger account (the sum of its
-- postings, numeric so it never overflows) and one total row, the one whose
-- account IS NULL: the sum over all accounts, which is always 0 in a
-- balanced ledger.
CREATE VIEW trial_balance WITH (security_invoker = true) AS
SELECT account::text AS account, coalesce(sum(amount), 0)::numeric AS balance
FROM ledger_entries
GROUP BY ROLLUP (account);

-- account_balances_at(cursor): every account's balance from the postings
-- at or before a feed cursor "<tx_id>-<position>" ('' or '0' is the start
-- of the feed and gives no rows). The cursor must be final, i.e. its
-- transaction below the snapshot horizon pg_snapshot_xmin(
-- pg_current_snapshot()): below it no transaction still running can add an
-- event before the cursor, so the answer never changes. A cursor at or
-- above the horizon raises 55000 (object_not_in_prerequisite_state); retry
-- in a new transaction, the horizon moves within milliseconds. Cursors from
-- the feed, exports and signed checkpoints are always final.
-- +goose StatementBegin
CREATE FUNCTION account_balances_at(at_cursor text)
    RETURNS TABLE (account text, balance numeric)
    LANGUAGE plpgsql STABLE SECURITY INVOKER
    AS $$
DECLARE
    c_tx  xid8;
    c_pos bigint;
    horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
BEGIN
    IF at_cursor IS NULL THEN
        RAISE EXCEPTION 'account_balances_at: cursor is null'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF at_cursor IN ('', '0') THEN
        RETURN;
    END IF;
    IF at_cursor !~ '^[0-9]{1,20}-[0-9]{1,19}$' THEN
        RAISE EXCEPTION 'account_balances_at: cursor % is not <tx_id>-<position>', quote_literal(at_cursor)
            USING ERRCODE = 'invalid_text_representation';
    END IF;
    c_tx := split_part(at_cursor, '-', 1)::xid8;
    c_pos := split_part(at_cursor, '-', 2)::bigint;
    IF c_tx >= horizon THEN
        RAISE EXCEPTION 'account_balances_at: cursor % is not final yet (horizon %)', at_cursor, horizon
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A transaction that may still add events before the cursor is running; retry in a new transaction.';
    END IF;
    RETURN QUERY
        SELECT l.account, sum(l.amount)::numeric
        FROM ledger_entries l
        WHERE (l.tx_id, l.position) <= (c_tx, c_pos)
        GROUP BY l.account
        ORDER BY l.account;
END
$$;
-- +goose StatementEnd

REVOKE ALL ON ledger_entries, trial_balance FROM PUBLIC;
REVOKE ALL ON FUNCTION account_balances_at(text) FROM PUBLIC;
GRANT SELECT ON ledger_entries, trial_balance TO mana_auditor;
GRANT EXECUTE ON FUNCTION account_balances_at(text) TO mana_auditor;
