"""The Python package against a real cluster (tests/consumers.sh starts it and sets EC_CONSUMERS_DSN, a superuser
connection string to a database with the extension): decrypt and shred, as the shell end to end does with the CLI.
"""
import json
import os
import time
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import event_crypto

TTL_SECONDS = 1


def dsn():
    d = os.environ.get("EC_CONSUMERS_DSN")
    if not d:
        pytest.fail("EC_CONSUMERS_DSN is not set: run through tests/consumers.sh, which starts the cluster")
    return d


def original(i, subject):
    return {
        "email": f"{subject}.{i}@example.org",
        "card": {"number": f"4111 1111 1111 {1000 + i}", "brand": "visa"},
        "amount": 10.25 * i,
        "tags": ["a", {"b": [i, None, True]}],
        "subject": subject,
    }


@pytest.fixture(scope="module")
def admin():
    with psycopg.connect(dsn(), autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def world(admin, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    key_file = keys / "py.key"
    public = event_crypto.keygen(str(key_file))
    assert public.startswith("ecpk1:")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert event_crypto.public_key(str(key_file)) == public
    admin.execute("CREATE TABLE py_events (id bigint PRIMARY KEY, stream_id uuid NOT NULL, subject_id text NOT NULL,"
                  " payload jsonb)")
    admin.execute("SELECT event_crypto.protect('py_events', 'payload', fields => ARRAY['email', 'card.number'],"
                  " key_column => 'subject_id', context_column => 'stream_id')")
    admin.execute("CREATE ROLE py_reader LOGIN")
    admin.execute("GRANT event_crypto_consumer TO py_reader")
    admin.execute("SELECT event_crypto.create_consumer('py', %s, '%%', %s::interval, 'py_reader')",
                  (public, f"{TTL_SECONDS} second"))
    originals = {}
    for i in range(1, 21):
        subject = "dave" if i % 2 else "erin"
        stream = str(uuid.uuid4())
        doc = original(i, subject)
        originals[i] = (subject, stream, doc)
        admin.execute("INSERT INTO py_events VALUES (%s, %s, %s, %s::jsonb)", (i, stream, subject, json.dumps(doc)))
    consumer_dsn = make_conninfo(dsn(), user="py_reader")
    return {"key_file": str(key_file), "dsn": consumer_dsn, "originals": originals}


def stored(admin):
    rows = admin.execute("SELECT id, stream_id::text, payload::text FROM py_events ORDER BY id").fetchall()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


@pytest.fixture(scope="module")
def consumer(world):
    return event_crypto.Consumer(world["dsn"], "py", world["key_file"])


def test_the_table_holds_envelopes(admin, world):
    _, _, payloads = stored(admin)
    for p in payloads:
        doc = json.loads(p)
        assert doc["email"].startswith("$ec2$")
        assert doc["card"]["number"].startswith("$ec2$")
        assert doc["card"]["brand"] == "visa"


def test_decrypt_many_gives_the_originals(admin, world, consumer):
    ids, streams, payloads = stored(admin)
    out = consumer.decrypt_many(payloads, streams)
    assert out == [world["originals"][i][2] for i in ids]
    # one key fetch for the whole batch (two subjects)
    assert consumer.stats["fetches"] == 1
    assert consumer.stats["decrypted"] == 40


def test_decrypt_takes_a_dict_or_json_text(admin, world, consumer):
    ids, streams, payloads = stored(admin)
    want = world["originals"][ids[0]][2]
    assert consumer.decrypt(payloads[0], context=streams[0]) == want
    assert consumer.decrypt(json.loads(payloads[0]), context=streams[0]) == want
    # documents without envelopes come back as they are
    assert consumer.decrypt({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}


def test_an_envelope_under_another_context_does_not_open(admin, world, consumer):
    ids, streams, payloads = stored(admin)
    with pytest.raises(event_crypto.DecryptError) as e:
        consumer.decrypt(payloads[0], context=str(uuid.uuid4()))
    assert world["originals"][ids[0]][2]["email"] not in str(e.value)
    with pytest.raises(event_crypto.DecryptError):
        consumer.decrypt(payloads[0])  # bound to a context: none given


def test_a_shred_reaches_the_consumer_after_its_ttl(admin, world, consumer):
    ids, streams, payloads = stored(admin)
    fetches = consumer.stats["fetches"]
    admin.execute("SELECT event_crypto.forget_subject('dave')")
    time.sleep(TTL_SECONDS + 0.5)
    out = consumer.decrypt_many(payloads, streams)
    for i, doc in zip(ids, out):
        subject, _, want = world["originals"][i]
        if subject == "dave":
            want = json.loads(json.dumps(want))
            want["email"] = None
            want["card"]["number"] = None
        assert doc == want, f"event {i} of {subject}"
    assert consumer.stats["fetches"] == fetches + 1
    assert consumer.stats["shredded"] == 20


def test_on_shredded_keep_and_error(admin, world):
    ids, streams, payloads = stored(admin)
    keep = event_crypto.Consumer(world["dsn"], "py", world["key_file"], on_shredded="keep")
    out = keep.decrypt(payloads[0], context=streams[0])  # id 1: dave's
    assert out["email"].startswith("$ec2$")
    strict = event_crypto.Consumer(world["dsn"], "py", world["key_file"], on_shredded="error")
    with pytest.raises(event_crypto.DecryptError):
        strict.decrypt(payloads[0], context=streams[0])
    with pytest.raises(event_crypto.ConfigError):
        event_crypto.Consumer(world["dsn"], "py", world["key_file"], on_shredded="maybe")


def test_key_files(world, tmp_path):
    with pytest.raises(event_crypto.ConfigError, match="never overwritten"):
        event_crypto.keygen(world["key_file"])
    with pytest.raises(event_crypto.ConfigError):
        event_crypto.Consumer(world["dsn"], "py", str(tmp_path / "missing.key"))
    loose = tmp_path / "loose.key"
    event_crypto.keygen(str(loose))
    loose.chmod(0o644)
    with pytest.raises(event_crypto.ConfigError, match="chmod 600"):
        event_crypto.Consumer(world["dsn"], "py", str(loose))


def test_a_revoked_consumer_is_refused(admin, world):
    ids, streams, payloads = stored(admin)
    admin.execute("SELECT event_crypto.revoke_consumer('py')")
    fresh = event_crypto.Consumer(world["dsn"], "py", world["key_file"])
    with pytest.raises(event_crypto.KeysRefused):
        fresh.decrypt(payloads[1], context=streams[1])
