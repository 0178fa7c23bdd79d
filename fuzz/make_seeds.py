#!/usr/bin/env python3
"""Writes the checked-in seed corpora in fuzz/seeds/ (run from anywhere).

Seeds are the published Thinkific samples plus edge cases, in each target's
input format (see the comment at the top of each fuzz_targets/*.rs).
"""
import base64
import hashlib
import hmac
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "..", "src", "thinkific", "samples")
SEEDS = os.path.join(HERE, "seeds")
FF = b"\xff"  # never in UTF-8: separates the parts of one input

samples = {
    n: open(os.path.join(SAMPLES, f"enrollment.{n}.json"), "rb").read()
    for n in ["created", "progress", "completed"]
}


def w(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


# envelope: HEADER_TOPIC 0xFF BODY [0xFF BODY]...
for n, b in samples.items():
    w("envelope", f"sample-{n}", FF + b)
w("envelope", "samples-in-order", FF + FF.join(samples[n] for n in ["created", "progress", "completed"]))
w("envelope", "samples-late-progress", FF + FF.join(samples[n] for n in ["completed", "progress", "created"]))
prog = json.loads(samples["progress"])
bare = {k: v for k, v in prog.items() if k not in ("resource", "action")}
w("envelope", "topic-from-header", b"enrollment.progress" + FF + json.dumps(bare).encode())
rest = dict(prog, id=20190131192004041953292, tenant_id=59)
rest["payload"] = dict(prog["payload"], percentage_completed=0.5, id="4", started_at=None,
                       updated_at="2014-02-01T00:20:05Z")
w("envelope", "numeric-ids-rest-percentage", FF + json.dumps(rest).encode())
trial = dict(prog, id="7", action="trial")
trial["payload"] = dict(prog["payload"], free_trial="true", percentage_completed="0", completed_at="")
done = dict(prog, id="8", action="completed", created_at="2014-02-01 00:20:04 +0000")
done["payload"] = dict(prog["payload"], percentage_completed=None, free_trial=False,
                       updated_at="2014-02-01T00:20:04")
w("envelope", "trial-then-completed", FF + json.dumps(trial).encode() + FF + json.dumps(done).encode())
order = {"id": "9", "resource": "order", "action": "created", "tenant_id": "59", "created_at": None,
         "tenant_global_id": "x", "payload": {"id": 1, "course": {"id": 25}, "amount_dollars": 10}}
w("envelope", "other-topic", FF + json.dumps(order).encode())
w("envelope", "not-an-object", FF + b"[1,2,3]")
w("envelope", "empty", FF + b"  ")

# signature: N SECRET[N] HEADER 0xFF BODY (no 0xFF: no header)
secret = b"school-api-key"


def sig_case(name, header, body, key=secret):
    w("signature", name, bytes([len(key)]) + key + (header + FF if header is not None else b"") + body)


for n, b in samples.items():
    sig_case(f"good-{n}", hmac.new(secret, b, hashlib.sha256).hexdigest().encode(), b)
b = samples["progress"]
good = hmac.new(secret, b, hashlib.sha256).digest()
sig_case("upper-padded", b"  " + good.hex().upper().encode() + b"\t", b)
sig_case("base64", base64.b64encode(good), b)
reser = json.dumps(json.loads(b), separators=(",", ":")).encode()
sig_case("reserialized", hmac.new(secret, reser, hashlib.sha256).hexdigest().encode(), b)
sig_case("short-hex", b"abcd", b)
sig_case("missing", None, b)
sig_case("empty-secret", hmac.new(b"", b, hashlib.sha256).hexdigest().encode(), b, key=b"")

# config: enrollhook.toml text
w("config", "sources", b'''listen = "0.0.0.0:9000"
database = "sqlite://enrollhook.db"
api_token = "admin-token-0123456789"
max_body = "2MiB"

[[source]]
name = "school-a"
secret = "key-a-0123456789"

[[source]]
name = "school_b"
secret = "key-b-0123456789"
''')
w("config", "minimal", b'secret = "school-api-key"\n')
w("config", "sizes", b"max_body = 1048576\n")
w("config", "size-units", b'max_body = "512 KiB"\n')
w("config", "inline-sources", b'source = [{ name = "a", secret = "k" }, { name = "b" }]\n')

# Regression: ids equal as numbers ("1", "01") made fold depend on arrival order.
a = dict(prog, id="1")
b = dict(prog, id="01")
b["payload"] = dict(prog["payload"], percentage_completed="50.0")
w("envelope", "regression-leading-zero-ids", FF + json.dumps(a).encode() + FF + json.dumps(b).encode())
