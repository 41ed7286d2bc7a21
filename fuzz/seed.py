#!/usr/bin/env python3
"""Builds the committed seed corpora in fuzz/seeds/<target>/ from the repository's
own material (lab PKI, shipped policies, vector INVITEs signed here with the lab
keys) and the RFC 4475 torture messages. Real STI certificates are not copied:
fuzz/run.sh adds ../shared/realworld/certs/core as a second corpus directory.

    python3 fuzz/seed.py            # needs python3-cryptography
"""
import base64, glob, hashlib, json, os, shutil, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
OUT = os.path.join(ROOT, "fuzz", "seeds")
TEST_NOW = 1_767_225_600
X5U = "https://sti.stirscreen.example/sp-a.pem"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def put(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


KEY = serialization.load_pem_private_key(
    open(os.path.join(ROOT, "certs/demo/sp-a.key"), "rb").read(), None)


def jws(header, claims):
    h = b64(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    p = b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    der = KEY.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    return f"{h}.{p}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def shaken(orig="12155551212", dest=("12125551213",), attest="A", ppt="shaken",
           crit=None, extra=None):
    header = {"alg": "ES256", "ppt": ppt, "typ": "passport", "x5u": X5U}
    if crit:
        header["crit"] = crit
    claims = {"attest": attest, "dest": {"tn": list(dest)}, "iat": TEST_NOW - 5,
              "orig": {"tn": orig}, "origid": "8b1f3c2e-5d4a-4f6b-9c7e-1a2b3c4d5e6f"}
    if ppt == "div":
        claims = {"dest": {"tn": list(dest)}, "div": {"tn": "12125551213"},
                  "iat": TEST_NOW - 3, "orig": {"tn": orig}}
    claims.update(extra or {})
    return jws(header, claims)


def identity(token, ppt="shaken", info=X5U):
    v = f"{token};info=<{info}>;alg=ES256"
    return v + (f";ppt={ppt}" if ppt else "")


def invite(identities, ruri="+12125551213", frm="+12155551212", extra=""):
    hdrs = "".join(f"Identity: {i}\r\n" for i in identities)
    body = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n"
    return (f"INVITE sip:{ruri}@example.net;user=phone SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK66f49d7514ae0fcf\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{frm}@example.net;user=phone>;tag=aea4b538\r\n"
            f"To: <sip:{ruri}@example.net;user=phone>\r\n"
            "Call-ID: d3f068879b7c8b88@stirscreen.lab\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:{frm}@192.0.2.10:5060>\r\n"
            "Date: Wed, 31 Dec 2025 23:59:55 GMT\r\n"
            f"{hdrs}{extra}Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    rcd = {"rcd": {"nam": "Example Bank", "icn": "https://brand.example/logo.png",
                   "crn": "Fraud alert"}}
    ids = [
        identity(shaken()),
        identity(shaken(attest="B")),
        identity(shaken(attest="C", orig="2155551212")),
        identity(shaken(), ppt=None),
        identity(shaken(), ppt='"shaken"'),
        identity(shaken(crit=["rcd"], extra=rcd)),
        identity(shaken(crit=["rcd", "rcdi"], extra=dict(rcd, rcdi={"/icn": "sha256-AAAA"}))),
        identity(shaken(ppt="rcd", extra=rcd), ppt="rcd"),
        identity(shaken(ppt="div", dest=("12125551214",)), ppt="div"),
        identity(".." + shaken().split(".")[2]),
        identity(shaken(crit=["unknown"])),
        identity(shaken(dest=("12125551213", "12125551299"))),
    ]
    invites = [invite([i]) for i in ids]
    invites.append(invite([ids[0], ids[8]], ruri="+12125551214",
                          extra="History-Info: <sip:+12125551213@example.net>;index=1\r\n"
                                "History-Info: <sip:+12125551214@example.net;cause=302>;index=1.1\r\n"))
    invites.append(invite([ids[0]], ruri="2125551213", frm="2155551212"))
    invites.append(invite([]))
    for i in ids:
        put("identity_passport", i)
    for m in invites:
        put("verify_prepare", m)
        put("sip_message", m)
    for f in sorted(glob.glob(os.path.join(SHARED, "conformance/rfc4475/*.dat"))):
        data = open(f, "rb").read()
        put("sip_message", data)
        put("stream_framing", b"\x07" + data)
    put("sip_message", open(os.path.join(ROOT, "tests/data/sample-call.sip"), "rb").read())
    resp = ("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK66f49d7514ae0fcf\r\n"
            "From: <sip:+12155551212@example.net>;tag=a\r\nTo: <sip:+12125551213@example.net>;tag=b\r\n"
            "Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    put("sip_message", resp)
    for piece in (1, 3, 17, 63):
        put("stream_framing", bytes([piece]) + ("\r\n\r\n" + invites[0] + resp + invites[5]).encode())
    put("stream_framing", b"\x05" + invites[1].encode() + b"\r\n")
    for f in sorted(glob.glob(os.path.join(ROOT, "certs/demo/*.pem"))):
        put("cert_chain", open(f, "rb").read())
    chain = b"".join(open(os.path.join(ROOT, f"certs/demo/{n}.pem"), "rb").read()
                     for n in ("sp-a", "sti-intermediate"))
    put("cert_chain", chain)
    for f in sorted(glob.glob(os.path.join(ROOT, "policies/**/*.*"), recursive=True)):
        if f.endswith((".toml", ".txt")):
            put("policy_file", open(f, "rb").read())
    for t in sorted(os.listdir(OUT)):
        print(t, len(os.listdir(os.path.join(OUT, t))))


if __name__ == "__main__":
    sys.exit(main())
