#!/usr/bin/env bash
# End to end for consumers outside PostgreSQL (issue 16; docs/consumers.md), on a cluster of its own
# (tests/clusters.sh's cluster a alone: wal_level = logical, a master key file), as root:
#   - a protected table (protect(): a key per subject, the stream id as context), a wal2json slot, events of three
#     subjects; pg_recvlogical -o format-version=2 piped into `event-crypto decrypt --input wal2json`: every
#     document comes out equal to the one inserted (the raw stream holds only envelopes);
#   - one long-running decrypt: the stream, then forget_subject('bob'), then after the consumer's TTL (2 s) the
#     stream again: bob's fields come out null, alice's and carol's still decrypt; the key was fetched again;
#   - a consumer whose key pattern excludes bob and carol: their fields stay envelopes (withheld, kept), or null
#     with --on-withheld null; alice's decrypt;
#   - Debezium-style change events (built from the table) with --input debezium;
#   - bad lines: --on-error skip reports and counts them, fail stops with a non-zero exit; an envelope read under
#     another context fails without printing any plaintext;
#   - keygen (mode 0600, never overwrites), inspect;
#   - revoke_consumer: the next key fetch is refused, non-zero exit, a clear message;
#   - with EC_PYTHON (a Python with the event_crypto wheel and pytest installed): crates/event_crypto_py/tests.
# Usage: bash tests/consumers.sh DIR
#   EVENT_CRYPTO_BIN  the CLI (default target/debug/event-crypto)    EC_CONSUMERS_PORT  the port (default 5460)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${1:?usage: bash tests/consumers.sh DIR}
BIN=${EVENT_CRYPTO_BIN:-$ROOT/target/debug/event-crypto}
PG_BIN=${EC_IT_PG_BIN:-/usr/lib/postgresql/15/bin}
PORT=${EC_CONSUMERS_PORT:-5460}
PYTHON=${EC_PYTHON:-}
DB=ec_consumers
[ -x "$BIN" ] || { echo "tests/consumers.sh: $BIN is not built (cargo build -p event_crypto_cli)" >&2; exit 1; }

EC_IT_CLUSTERS=a EC_IT_PORT_BASE=$PORT bash tests/clusters.sh start "$DIR"
trap 'EC_IT_CLUSTERS=a bash "$ROOT/tests/clusters.sh" stop "$DIR"' EXIT
W=$DIR/work
rm -rf "$W" && install -d -m 700 "$W"
SU="host=127.0.0.1 port=$PORT user=postgres"
CONSUMER_DSN="host=127.0.0.1 port=$PORT user=analytics dbname=$DB"
sql() { "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$SU dbname=$DB" "$@"; }
"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$SU dbname=postgres" -c "CREATE DATABASE $DB"

T0=$(date +%s%N)
ok() { echo "test consumers_$1 ... ok $((($(date +%s%N) - T0) / 1000000)) ms"; T0=$(date +%s%N); }
fail() { echo "test consumers_$1 ... FAILED"; shift; printf '%s\n' "$@" >&2; exit 1; }
# python3 with the checks below: check.py MODE FILES...
CHECK=$W/check.py
cat > "$CHECK" <<'PY'
import copy, json, re, sys
from decimal import Decimal

def load(s):
    return json.loads(s, parse_float=Decimal)

def originals(path):
    return {o["id"]: o for o in map(load, open(path))}

ENCRYPTED = [("email",), ("phone",), ("address", "street")]

def shredded(doc):
    doc = copy.deepcopy(doc)
    for path in ENCRYPTED:
        d = doc
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = None
    return doc

def field(doc, path):
    for k in path:
        doc = doc[k]
    return doc

def wal2json_payloads(path):
    """(id, payload) of every insert into events, in order."""
    out = []
    for line in open(path):
        r = json.loads(line)
        if r.get("action") == "I" and r.get("table") == "events":
            cols = {c["name"]: c["value"] for c in r["columns"]}
            out.append((cols["id"], load(cols["payload"])))
    return out

def expect(cond, msg):
    if not cond:
        sys.exit(msg)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "raw":                      # the stream as published: envelopes only
    orig, stream = originals(args[0]), wal2json_payloads(args[1])
    expect(len(stream) == len(orig), f"{len(stream)} inserts in the stream, {len(orig)} expected")
    for i, p in stream:
        for f in ENCRYPTED:
            v = field(p, f)
            expect(isinstance(v, str) and v.startswith("$ec2$"), f"event {i}: {f} is not an envelope")
        expect(p["amount"] == orig[i]["payload"]["amount"], f"event {i}: amount changed")
elif mode == "equal":                  # decrypted: equal to the originals; with "shredded SUBJECT", those null
    orig, stream = originals(args[0]), wal2json_payloads(args[1])
    gone = set(args[3:]) if len(args) > 2 and args[2] == "shredded" else set()
    expect(len(stream) == len(orig), f"{len(stream)} documents, {len(orig)} expected")
    for i, p in stream:
        o = orig[i]
        want = shredded(o["payload"]) if o["subject"] in gone else o["payload"]
        expect(p == want, f"event {i} of {o['subject']} differs from the original")
elif mode == "withheld":               # pattern excludes the subjects in args[3:]: their fields stay envelopes
    orig, stream, policy = originals(args[0]), wal2json_payloads(args[1]), args[2]
    excluded = set(args[3:])
    for i, p in stream:
        o = orig[i]
        if o["subject"] == "bob":
            continue                   # shredded whole: its key id is gone, withheld or shredded alike
        if o["subject"] in excluded:
            for f in ENCRYPTED:
                v = field(p, f)
                ok = v is None if policy == "null" else isinstance(v, str) and v.startswith("$ec2$")
                expect(ok, f"event {i} of {o['subject']}: {f} is not {policy}: withheld")
            expect(p["amount"] == o["payload"]["amount"], f"event {i}: unencrypted field changed")
        else:
            expect(p == o["payload"], f"event {i} of {o['subject']} differs from the original")
elif mode == "debezium":
    orig = originals(args[0])
    gone = set(args[2:])
    n = 0
    for line in open(args[1]):
        e = json.loads(line)
        after = e["after"]
        expect(isinstance(after["payload"], str), "the payload must stay a JSON string")
        o = orig[after["id"]]
        want = shredded(o["payload"]) if o["subject"] in gone else o["payload"]
        expect(load(after["payload"]) == want, f"Debezium event {after['id']} differs")
        n += 1
    expect(n == len(orig), f"{n} Debezium events, {len(orig)} expected")
elif mode == "fetches":                # the summary line says at least N key fetches
    m = re.search(r"(\d+) key fetch", open(args[0]).read())
    expect(m and int(m.group(1)) >= int(args[1]), f"expected at least {args[1]} key fetches: {m and m.group(0)}")
elif mode == "generate":               # originals.jsonl and the INSERTs
    import uuid, random
    rnd = random.Random(16)
    with open(args[0], "w") as orig, open(args[1], "w") as ins:
        i = 0
        for n in range(30):
            for subject in ["alice", "bob", "carol"]:
                i += 1
                stream = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
                payload = {
                    "email": f"{subject}.{n}@example.com",
                    "phone": f"+41 79 {rnd.randrange(10**6, 10**7)}",
                    "address": {"street": f"{n} Bahnhofstrasse \"am See\"", "city": "Zurich"},
                    "amount": "AMOUNT",
                    "items": [{"sku": f"s-{k}", "qty": k} for k in range(n % 4)],
                    "flag": n % 2 == 0,
                    "note": None,
                }
                # an exact decimal with a trailing zero: jsonb and the decryption keep its digits
                doc = json.dumps(payload).replace('"AMOUNT"', f"{rnd.randrange(100, 100000)}.50")
                orig.write(json.dumps({"id": i, "subject": subject, "stream": stream})[:-1] + f', "payload": {doc}}}\n')
                ins.write(f"INSERT INTO events (id, stream_id, subject_id, type, payload) VALUES "
                          f"({i}, '{stream}', '{subject}', 'OrderPlaced', $j${doc}$j$);\n")
PY
py() { python3 "$CHECK" "$@"; }

# --- set-up: extension, protected table, consumers, slot, events -------------------------------------------------
py generate "$W/originals.jsonl" "$W/inserts.sql"
"$BIN" keygen --out "$W/full.key" > "$W/full.pub"
"$BIN" keygen --out "$W/alice.key" > "$W/alice.pub"
[ "$(stat -c %a "$W/full.key")" = 600 ] || fail keygen "the key file is not mode 0600"
if "$BIN" keygen --out "$W/full.key" > /dev/null 2> "$W/keygen.err"; then fail keygen "keygen overwrote a key file"; fi
grep -q "never overwritten" "$W/keygen.err" || fail keygen "no clear message: $(cat "$W/keygen.err")"
grep -q '^ecpk1:' "$W/full.pub" || fail keygen "keygen printed no public key"
ok keygen

sql -v pk_full="$(cat "$W/full.pub")" -v pk_alice="$(cat "$W/alice.pub")" > /dev/null <<'SQL'
CREATE EXTENSION event_crypto;
CREATE TABLE events (id bigint PRIMARY KEY, stream_id uuid NOT NULL, subject_id text NOT NULL, type text,
                     payload jsonb);
SELECT event_crypto.protect('events', 'payload', fields => ARRAY['email', 'phone', 'address.street'],
                            key_column => 'subject_id', context_column => 'stream_id');
CREATE ROLE analytics LOGIN;
GRANT event_crypto_consumer TO analytics;
SELECT event_crypto.create_consumer('full', :'pk_full', '%', '2 seconds', 'analytics');
SELECT event_crypto.create_consumer('alice_only', :'pk_alice', 'subject:alice%', '1 minute', 'analytics');
SELECT 1 FROM pg_create_logical_replication_slot('ec_consumers', 'wal2json');
SQL
sql -f "$W/inserts.sql" > /dev/null
END_LSN=$(sql -c "SELECT pg_current_wal_lsn()")

# --- wal2json through pg_recvlogical into event-crypto decrypt ----------------------------------------------------
DECRYPT=(decrypt --dsn "$CONSUMER_DSN" --input wal2json --column payload --context-column stream_id)
runuser -u postgres -- "$PG_BIN/pg_recvlogical" -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" -S ec_consumers \
    --start -o format-version=2 -E "$END_LSN" --no-loop -f - \
  | tee "$W/stream.jsonl" \
  | "$BIN" "${DECRYPT[@]}" --consumer full --key-file "$W/full.key" > "$W/out1.jsonl" 2> "$W/out1.err" \
  || fail wal2json "decrypt failed" "$(cat "$W/out1.err")"
py raw "$W/originals.jsonl" "$W/stream.jsonl" || fail wal2json "the published stream is not encrypted as expected"
py equal "$W/originals.jsonl" "$W/out1.jsonl" || fail wal2json "decrypted documents differ"
ok wal2json_pg_recvlogical

# --- a shred reaches a running consumer within its TTL ------------------------------------------------------------
N=$(wc -l < "$W/stream.jsonl")
: > "$W/out2.jsonl"
{
  cat "$W/stream.jsonl"
  for _ in $(seq 300); do [ "$(wc -l < "$W/out2.jsonl")" -ge "$N" ] && break; sleep 0.1; done
  sql -c "SELECT event_crypto.forget_subject('bob')" > /dev/null
  sleep 3   # the consumer's TTL is 2 s
  cat "$W/stream.jsonl"
} | "$BIN" "${DECRYPT[@]}" --consumer full --key-file "$W/full.key" > "$W/out2.jsonl" 2> "$W/out2.err" \
  || fail shred_ttl "decrypt failed" "$(cat "$W/out2.err")"
head -n "$N" "$W/out2.jsonl" > "$W/out2a.jsonl"
tail -n +"$((N + 1))" "$W/out2.jsonl" > "$W/out2b.jsonl"
py equal "$W/originals.jsonl" "$W/out2a.jsonl" || fail shred_ttl "before the shred: documents differ"
py equal "$W/originals.jsonl" "$W/out2b.jsonl" shredded bob || fail shred_ttl "after the TTL: not as expected"
py fetches "$W/out2.err" 2 || fail shred_ttl "the expired keys were not fetched again"
ok shred_after_ttl

# --- a consumer whose pattern excludes a key gets none of its fields ----------------------------------------------
"$BIN" "${DECRYPT[@]}" --consumer alice_only --key-file "$W/alice.key" < "$W/stream.jsonl" > "$W/out3.jsonl" \
  2> "$W/out3.err" || fail withheld "decrypt failed" "$(cat "$W/out3.err")"
py withheld "$W/originals.jsonl" "$W/out3.jsonl" keep bob carol || fail withheld "withheld keys: not kept"
grep -Eq '[1-9][0-9]* withheld' "$W/out3.err" || fail withheld "no withheld fields counted: $(cat "$W/out3.err")"
"$BIN" "${DECRYPT[@]}" --consumer alice_only --key-file "$W/alice.key" --on-withheld null < "$W/stream.jsonl" \
  > "$W/out4.jsonl" 2> "$W/out4.err" || fail withheld "decrypt failed" "$(cat "$W/out4.err")"
py withheld "$W/originals.jsonl" "$W/out4.jsonl" null bob carol || fail withheld "withheld keys: not null"
ok pattern_withholds

# --- Debezium-style change events ---------------------------------------------------------------------------------
sql -c "SELECT json_build_object('before', NULL, 'after', json_build_object('id', id, 'stream_id', stream_id,
          'subject_id', subject_id, 'payload', payload::text), 'op', 'c',
          'source', json_build_object('schema', 'public', 'table', 'events')) FROM events ORDER BY id" \
  > "$W/debezium.jsonl"
"$BIN" decrypt --dsn "$CONSUMER_DSN" --consumer full --key-file "$W/full.key" --input debezium --field payload \
  --context-column stream_id "$W/debezium.jsonl" > "$W/out5.jsonl" 2> "$W/out5.err" \
  || fail debezium "decrypt failed" "$(cat "$W/out5.err")"
py debezium "$W/originals.jsonl" "$W/out5.jsonl" bob || fail debezium "Debezium events differ"
ok debezium

# --- bad lines: skip or fail; no plaintext in messages ------------------------------------------------------------
INSERT=$(grep -m1 '"table":"events"' "$W/stream.jsonl")
ALICE_STREAM=$(head -1 "$W/originals.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stream"])')
MOVED=${INSERT//$ALICE_STREAM/00000000-0000-4000-8000-000000000000}   # read under another stream: must not open
printf '%s\nnot json\n%s\n%s\n' '{"action":"B"}' "$MOVED" "$INSERT" > "$W/bad.jsonl"
"$BIN" "${DECRYPT[@]}" --consumer alice_only --key-file "$W/alice.key" --on-error skip < "$W/bad.jsonl" \
  > "$W/out6.jsonl" 2> "$W/out6.err" || fail on_error "--on-error skip exited non-zero" "$(cat "$W/out6.err")"
[ "$(wc -l < "$W/out6.jsonl")" = 2 ] || fail on_error "skip: expected 2 lines out" "$(cat "$W/out6.jsonl")"
grep -q 'stdin:2: not a JSON value' "$W/out6.err" || fail on_error "skip: line 2 not reported" "$(cat "$W/out6.err")"
grep -q 'stdin:3: ' "$W/out6.err" || fail on_error "skip: line 3 not reported" "$(cat "$W/out6.err")"
grep -q '2 failed' "$W/out6.err" || fail on_error "skip: no count of failed lines" "$(cat "$W/out6.err")"
if grep -q 'alice.0@example.com' "$W/out6.err"; then fail on_error "a message printed a plaintext"; fi
if "$BIN" "${DECRYPT[@]}" --consumer alice_only --key-file "$W/alice.key" < "$W/bad.jsonl" > "$W/out7.jsonl" \
     2> "$W/out7.err"; then fail on_error "--on-error fail exited 0"; fi
[ "$(wc -l < "$W/out7.jsonl")" = 1 ] || fail on_error "fail: expected the one line before the bad one"
grep -q 'stdin:2: ' "$W/out7.err" || fail on_error "fail: line 2 not reported" "$(cat "$W/out7.err")"
if grep -q 'stdin:3: ' "$W/out7.err"; then fail on_error "fail: went on after the first bad line"; fi
ok on_error

# --- inspect -------------------------------------------------------------------------------------------------------
ENVELOPE=$(python3 -c 'import json,sys; print(json.loads(json.loads(sys.argv[1])["columns"][4]["value"])["email"])' \
           "$INSERT")
"$BIN" inspect "$ENVELOPE" > "$W/inspect.out" || fail inspect "inspect failed"
grep -Eq '^\(root\): format 2, (aes-256-gcm|chacha20-poly1305), key handle [0-9a-f]{16}, version 1, context bound$' \
  "$W/inspect.out" || fail inspect "unexpected header: $(cat "$W/inspect.out")"
python3 -c 'import json,sys; print(json.loads(sys.argv[1])["columns"][4]["value"])' "$INSERT" \
  | "$BIN" inspect --json > "$W/inspect.json" || fail inspect "inspect of a document failed"
[ "$(grep -c '"context_bound":true' "$W/inspect.json")" = 3 ] || fail inspect "$(cat "$W/inspect.json")"
ok inspect

# --- revocation: fetches are refused ------------------------------------------------------------------------------
sql -c "SELECT event_crypto.revoke_consumer('full')" > /dev/null
if "$BIN" "${DECRYPT[@]}" --consumer full --key-file "$W/full.key" < "$W/stream.jsonl" > "$W/out8.jsonl" \
     2> "$W/out8.err"; then fail revoke "a revoked consumer decrypted"; fi
grep -q 'refused to hand out keys' "$W/out8.err" || fail revoke "no clear message: $(cat "$W/out8.err")"
if grep -q '"action":"I"' "$W/out8.jsonl"; then fail revoke "a revoked consumer wrote documents"; fi
ok revoke

if [ -n "$PYTHON" ]; then
  EC_CONSUMERS_DSN="$SU dbname=$DB" "$PYTHON" -m pytest -q crates/event_crypto_py/tests
fi
echo "consumers: all checks passed"
