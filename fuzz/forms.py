"""Harness `forms`: POST Object's browser forms as the S3 face reads them: `Form` (the
multipart/form-data body streamed: `read_fields`, then `file`), `check_signature`,
`check_policy`, and the metadata taken from the fields (`headers_from`).

The last bytes pick a mode:
- raw: a Content-Type line, then any body, read as post_object reads it (fields, signature,
  policy, metadata, the file);
- encoded: fields (known names and any), a file and perhaps fields after it, encoded here as
  a browser would, perhaps with a policy that names every field and its signature (SigV4 or
  V2, made here from AWS's description), perhaps expired, a field changed after signing, the
  signature replaced by any bytes, or with a content-length-range the file exceeds;
- policy: any bytes as the policy document, checked against a few fields.
A crash is an exception other than S3Error and BadPayload, or a broken invariant:
- the outcome (fields, file name and bytes, or the error's code) is the same however the body
  is cut into pieces (but for a body that starts with CR or LF: python-multipart skips from
  there to the next "-" of the same piece, so its pieces matter);
- an encoded form reads back as sent: its fields before the file (names lower-cased, the first
  of a name kept), the file's name and bytes; a signed one passes check_signature and
  check_policy, unless expired or tampered with; a file over the range is refused.
"""

import base64
import hashlib
import hmac
import json

import atheris

from fuzz.common import Broken, check, drive, pieces, run, source, tail

with atheris.instrument_imports(include=["mkv", "python_multipart"]):
    from mkv.s3.awschunked import BadPayload
    from mkv.s3.errors import S3Error
    from mkv.s3.forms import Form, check_policy, check_signature
    from mkv.s3.metadata import headers_from

MAX_LEN = 8192
RAW, ENCODED, POLICY = range(3)
UNSIGNED, SIGNED_V4, SIGNED_V2 = range(3)
INTACT, TAMPER_FIELD, TAMPER_SIGNATURE, EXPIRED = range(4)
ACCESS_KEY, SECRET = "AKIDFUZZ", "fuzz-secret"
SECRETS = {ACCESS_KEY: SECRET}
NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
NAMES = ("key", "content-type", "x-amz-meta-a", "success_action_status", "acl",
         "x-ignore-this", "Cache-Control", "success_action_redirect", "tagging", "file")
SIGNATURE_FIELDS = {"policy", "x-amz-signature", "signature", "awsaccesskeyid",
                    "x-amz-credential", "x-amz-algorithm", "x-amz-date"}
_TOKEN = b"abcdefghijklmnopqrstuvwxyz0123456789-_"


async def _read(parts: list[bytes], content_type: bytes, smallest: int,
                largest: int | None) -> tuple:
    """The form as post_object reads it: the fields, then (had they passed) the file."""
    try:
        form = Form(source(parts), content_type)  # type: ignore[arg-type]
        await form.read_fields()
        fields = dict(form.fields)
        data = b"".join([block async for block in form.file(smallest, largest)])
    except (S3Error, BadPayload) as e:
        return ("refused", type(e).__name__, e.code)
    return ("read", fields, form.filename, data)


def read(body: bytes, content_type: bytes, cut: int, smallest: int = 0,
         largest: int | None = None) -> tuple:
    whole = drive(_read([body] if body else [], content_type, smallest, largest))
    split = drive(_read(pieces(body, cut, 5, 11, 97), content_type, smallest, largest))
    # python-multipart skips a leading CR or LF up to the next "-" of the same piece only
    check(whole == split or body[:1] in (b"\r", b"\n"),
          f"whole: {whole!r:.300}, in pieces: {split!r:.300}")
    return whole


def checks(fields: dict[str, str]) -> None:
    """What post_object does with the fields; only S3Error may come of it."""
    try:
        check_signature(fields, SECRETS)
    except S3Error:
        pass
    if "policy" in fields:
        try:
            check_policy(fields["policy"], fields, "bucket", NOW)
        except S3Error:
            pass
    try:
        headers_from((name.encode(), value.encode()) for name, value in fields.items())
    except S3Error:
        pass


def raw(fdp: atheris.FuzzedDataProvider) -> None:
    cut = fdp.ConsumeIntInRange(0, 255)
    content_type, _, body = fdp.ConsumeBytes(fdp.remaining_bytes()).partition(b"\n")
    outcome = read(body, content_type, cut)
    if outcome[0] == "read":
        checks(outcome[1])


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes) -> bytes:
    """A browser's body: each (Content-Disposition's parameters, content) a part."""
    out = [b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (boundary, params,
                                                                           content)
           for params, content in parts]
    return b"".join(out) + b"--%s--\r\n" % boundary


def token(data: bytes) -> str:
    return bytes(_TOKEN[b % len(_TOKEN)] for b in data).decode()


Rules = dict[str, tuple[str, str]]  # field → the condition on it: eq or starts-with, value


def policy_for(fields: dict[str, str], largest: int, expired: bool) -> tuple[str, Rules]:
    """A policy that names every field the form must name, eq or starts-with by turns."""
    conditions: list = [{"bucket": "bucket"}, ["content-length-range", 0, largest]]
    rules = {}
    for i, (name, value) in enumerate(sorted(fields.items())):
        if name not in ("x-amz-signature", "signature", "awsaccesskeyid", "policy") and \
                not name.startswith("x-ignore-"):
            rules[name] = ("eq", value) if i % 2 else ("starts-with", value[:i])
            conditions.append([rules[name][0], f"${name}", rules[name][1]])
    document = {"expiration": "2023-11-14T22:13:19Z" if expired else "2030-01-01T00:00:00Z",
                "conditions": conditions}
    return base64.b64encode(json.dumps(document).encode()).decode(), rules


def sign(fields: dict[str, str], how: int, largest: int, expired: bool
         ) -> tuple[dict[str, str], Rules]:
    """The signature's fields, for a form whose other fields are `fields`; the policy's
    rules."""
    if how == SIGNED_V4:
        date = "20231114"
        signing = {"x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-date": f"{date}T221320Z",
                   "x-amz-credential": f"{ACCESS_KEY}/{date}/us-east-1/s3/aws4_request"}
        policy, rules = policy_for(fields | signing, largest, expired)
        key = ("AWS4" + SECRET).encode()
        for part in (date, "us-east-1", "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, policy.encode(), hashlib.sha256).hexdigest()
        return signing | {"policy": policy, "x-amz-signature": signature}, rules
    policy, rules = policy_for(fields | {"awsaccesskeyid": ACCESS_KEY}, largest, expired)
    signature = base64.b64encode(hmac.new(SECRET.encode(), policy.encode(), hashlib.sha1)
                                 .digest()).decode()
    return {"awsaccesskeyid": ACCESS_KEY, "policy": policy, "signature": signature}, rules


def encoded(fdp: atheris.FuzzedDataProvider) -> None:
    how, damage, cut, slack, after = (fdp.ConsumeIntInRange(0, 2), fdp.ConsumeIntInRange(0, 3),
                                      fdp.ConsumeIntInRange(0, 255),
                                      fdp.ConsumeIntInRange(0, 15), fdp.ConsumeIntInRange(0, 1))
    names = [fdp.ConsumeIntInRange(0, 255) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    lines = fdp.ConsumeBytes(fdp.remaining_bytes()).split(b"\n")
    filename, data, values = lines[0], lines[1] if len(lines) > 1 else b"", lines[2:]
    sent: list[tuple[str, bytes]] = []  # the fields before the file, in order
    for i, choice in enumerate(names):
        name = NAMES[choice] if choice < len(NAMES) else token(bytes([choice, i]))
        if name.lower() == "file" or how and name.lower() in SIGNATURE_FIELDS:
            name = f"x-ignore-{i}"
        sent.append((name, values[i] if i < len(values) else b""))
    fields: dict[str, str] = {}
    for name, value in sent:
        fields.setdefault(name.lower(), value.decode("utf-8", "replace"))
    largest = max(0, len(data) + slack - 4)  # a file up to 4 bytes over the range
    rules: Rules = {}
    if how:
        signing, rules = sign(fields, how, largest, damage == EXPIRED)
        sent += [(name, value.encode()) for name, value in signing.items()]
        fields |= signing
    still_holds = True  # the policy, after any tampering
    if how and damage == TAMPER_FIELD:
        firsts = {}  # the part that gives each conditioned field its value
        for i, (name, _) in enumerate(sent):
            if name.lower() in rules and name.lower() not in SIGNATURE_FIELDS:
                firsts.setdefault(name.lower(), i)
        if firsts:
            i = sorted(firsts.values())[slack % len(firsts)]
            name = sent[i][0].lower()
            sent[i] = (sent[i][0], b"!" + sent[i][1])
            fields[name] = sent[i][1].decode("utf-8", "replace")
            operator, value = rules[name]
            still_holds = fields[name] == value if operator == "eq" else \
                fields[name].startswith(value)
    if how and damage == TAMPER_SIGNATURE:
        name = "x-amz-signature" if how == SIGNED_V4 else "signature"
        at = [n for n, _ in sent].index(name)
        forged = b"A" + lines[-1]  # any bytes after the input's last line
        sent[at] = (name, forged)
        fields[name] = forged.decode("utf-8", "replace")
    parts = [(b'name="%s"' % name.encode(), value) for name, value in sent]
    parts.append((b'name="file"; filename="%s"' % safe_filename(filename).encode(), data))
    if after:
        parts.append((b'name="late"', b"after the file: ignored"))
    boundary = b"----fuzzboundary"
    while any(boundary in content for _, content in parts):
        boundary += b"x"
    body = multipart(parts, boundary)
    outcome = read(body, b"multipart/form-data; boundary=" + boundary, cut, 0,
                   largest if how else None)
    too_large = how and len(data) > largest
    if too_large:
        check(outcome[:3] == ("refused", "BadPayload", "EntityTooLarge"),
              f"a file over the range: {outcome!r:.200}")
        return
    check(outcome == ("read", fields, safe_filename(filename), data),
          f"read {outcome!r:.300}, sent {fields!r:.300}")
    if not how:
        checks(fields)
        return
    try:
        check_signature(fields, SECRETS)
        signature_ok = True
    except S3Error:
        signature_ok = False
    check(signature_ok == (damage != TAMPER_SIGNATURE), f"check_signature: {signature_ok}")
    try:
        found = check_policy(fields["policy"], fields, "bucket", NOW)
    except S3Error as e:
        found = e
    if damage != EXPIRED and still_holds:
        check(found == (0, largest), f"check_policy gave {found!r}")
    else:
        check(isinstance(found, S3Error) and found.status == 403, f"check_policy: {found!r}")


def safe_filename(data: bytes) -> str:
    """A file name a browser sends as it is: no quote, backslash, CR or LF."""
    return data.decode("utf-8", "replace").translate({ord(c): "_" for c in '"\\\r\n'})


def policy(fdp: atheris.FuzzedDataProvider) -> None:
    document = fdp.ConsumeBytes(fdp.remaining_bytes())
    fields = {"key": "user/file.txt", "content-type": "text/plain", "x-amz-meta-a": "1",
              "policy": base64.b64encode(document).decode()}
    try:
        found = check_policy(fields["policy"], fields, "bucket", NOW)
    except S3Error:
        return
    smallest, largest = found
    if not (isinstance(smallest, int) and (largest is None or isinstance(largest, int))):
        raise Broken(f"check_policy gave {found!r}")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, POLICY)
    (raw, encoded, policy)[mode](fdp)


def _raw_seed() -> bytes:
    body = multipart([(b'name="key"', b"user/${filename}"), (b'name="Policy"', b"eyJ9"),
                      (b'name="x-amz-signature"', b"00"), (b'name="x-amz-algorithm"',
                                                           b"AWS4-HMAC-SHA256"),
                      (b'name="x-amz-credential"', b"AKIDFUZZ/20231114/us-east-1/s3/aws4_request"),
                      (b'name="file"; filename="a.txt"', b"file contents"),
                      (b'name="after"', b"x")], b"XyZ")
    return b"multipart/form-data; boundary=XyZ\n" + body + tail(RAW, 17)


def _policy_seed(conditions: list, expiration: str = "2030-01-01T00:00:00.000Z") -> bytes:
    return json.dumps({"expiration": expiration, "conditions": conditions}).encode() + \
        tail(POLICY)


DICTIONARY = [
    b"Content-Disposition: form-data; name=", b"; filename=", b"multipart/form-data; boundary=",
    b"\r\n--", b'"content-length-range"', b'"starts-with"', b'"eq"', b'"$key"', b"1e999",
    b"-1e999", b"Infinity", b"NaN", b"[[[[[[[[", b'"expiration"', b'"conditions"',
    b"x-amz-signature", b"x-amz-credential", b"AWS4-HMAC-SHA256", b"\xc3\xa9", b"\xff",
]

SEEDS = [
    _raw_seed(),
    b"multipart/form-data; boundary=b\n--b\r\nContent-Disposition: form-data; name=file\r\n\r\n"
    b"x\r\n--b--\r\n" + tail(RAW, 3),
    b"multipart/form-data\n--b\r\n" + tail(RAW, 0),
    b'multipart/form-data; boundary="a b"\n--a b\r\nContent-Disposition: form-data; '
    b'name="signature"\r\n\r\n\xff\xfe\r\n--a b\r\nContent-Disposition: form-data; '
    b'name="AWSAccessKeyId"\r\n\r\nAKIDFUZZ\r\n--a b\r\nContent-Disposition: form-data; '
    b'name="policy"\r\n\r\neyJhIjoxfQ==\r\n--a b--\r\n' + tail(RAW, 99),
    b"name.txt\nthe file's bytes\nuser/key\ntext/plain\n\xc3\xa9t\xc3\xa9"
    + tail(ENCODED, UNSIGNED, INTACT, 5, 4, 1, 3, 0, 1, 2),
    b"photo.jpg\n\xff\xd8\xff\xe0 jpeg\nuploads/${filename}\nimage/jpeg\n201\nvalue"
    + tail(ENCODED, SIGNED_V4, INTACT, 9, 8, 0, 4, 0, 1, 3, 200),
    b"a\nbytes\nk\n" + tail(ENCODED, SIGNED_V2, INTACT, 1, 6, 1, 1, 0),
    b"a\nbytes\nk\nv" + tail(ENCODED, SIGNED_V4, TAMPER_FIELD, 1, 7, 0, 2, 0, 2),
    b"a\nbytes\nk" + tail(ENCODED, SIGNED_V2, TAMPER_SIGNATURE, 1, 4, 0, 1, 0),
    b"a\nbytes\nk" + tail(ENCODED, SIGNED_V4, EXPIRED, 1, 4, 0, 1, 0),
    b"a\na large file\nk" + tail(ENCODED, SIGNED_V2, INTACT, 1, 0, 0, 1, 0),
    _policy_seed([{"bucket": "bucket"}, ["starts-with", "$key", "user/"],
                  ["eq", "$Content-Type", "text/plain"], {"x-amz-meta-a": "1"},
                  ["content-length-range", 1, 1048576]]),
    _policy_seed([["content-length-range", 1.0e3, 1e30], ["starts-with", "$key", ""]],
                 "2023-11-14T22:13:21+00:00"),
    _policy_seed([["eq", "$bucket", "other"]], "2023-11-14"),
    _policy_seed([[[["nested"]]], {"a": 1, "b": 2}, ["eq", 1, 2]], "garbage"),
    # near json's recursion limit (Python's, 1,000 frames): conditions nested 900 deep
    _policy_seed([json.loads("[" * 900 + "]" * 900)]),
    # crashes found and fixed, kept: a boundary over 256 bytes, a signature that is not
    # ASCII, a content-length-range to infinity
    b"multipart/form-data; boundary=" + b"b" * 300 + b"\n--" + b"b" * 300 + tail(RAW, 0),
    _raw_seed().replace(b"\r\n\r\n00\r\n", b"\r\n\r\n\xc3\xa9\r\n"),
    _policy_seed([["content-length-range", 1, 1e999]]),
]

if __name__ == "__main__":
    run(TestOneInput, SEEDS, MAX_LEN, DICTIONARY)
