"""Hostile requests for tests/test_adversary.py, as bytes on the wire: hypothesis strategies
that draw an operation as a client makes it (SPEC §4's native ones, S3's), change it as an
adversary would (the mark injected into its strings, parameters and headers added, doubled or
dropped, its path or method swapped, signature fields smuggled into other values), sign it
(SigV4, in a header or presigned; a POST form's policy) and maybe alter it after signing, then
frame its body (exact, chunked, aws-chunked, lengths that lie, cut off).

Each request comes with what the checks need: whether it must be refused, which key it names,
whether its body was cut off, and its kinds for the counts.
"""

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from hypothesis import strategies as st

ACCESS, SECRET = "AKIDADVERSARY", "adv/secret+key"  # the keys master's one key
REGION = "us-east-1"
MARK = f"X-Injected-{secrets.token_hex(3)}"  # what a request tries to make a response header
TARGETS = ("plain", "keys", "keys-s3port")
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "UNLINK", "RELINK", "REPLACE", "REBALANCE")
UPLOAD_IDS: dict[str, str] = {}  # master → a multipart upload in progress (the test's rig sets)


# --- the generators: bytes as they go on the wire ---


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn about `weight` times as often (one_of draws its
    branches alike, however often one is given)."""
    branches = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(branches).flatmap(lambda i: choices[i][1])


def esc(data: bytes) -> bytes:
    return b"".join(b"%%%02X" % c for c in data)


SEPARATORS = ("\r\n", "\n", "\r", "\x00", "\r\n\r\n", "\x0b", "\x1f", "\x7f", "\x00\r\n")


def injected(sep: str) -> str:
    return f"a{sep}{MARK}: 1"


def rfc2047(sep: str) -> str:
    return "=?UTF-8?Q?a" + "".join(f"={b:02X}" for b in sep.encode()) + f"{MARK}:_1?="


# the mark after a control byte, as each kind of string carries it
injection = st.sampled_from(SEPARATORS).map(injected)
in_url = injection.map(lambda s: quote(s, safe="").encode())
in_header = st.one_of(in_url, st.sampled_from(SEPARATORS).map(rfc2047).map(str.encode),
                      st.sampled_from(SEPARATORS).map(
                          lambda s: b"=?UTF-8?B?" + base64.b64encode(injected(s).encode())
                          + b"?="))
in_header_raw = injection.map(str.encode)  # splits the header: the mark becomes a request header
in_xml = st.sampled_from(SEPARATORS).map(
    lambda s: "a" + "".join(f"&#{ord(c)};" for c in s) + f"{MARK}: 1")


def or_injected(values: list[bytes], where: st.SearchStrategy = in_url) -> st.SearchStrategy:
    return weighted((5, st.sampled_from(values)), (1, where))


# paths: keys that exist (so reads, overwrites and deletes meet values), new ones, and junk
EXISTING = [b"/adv/v0", b"/adv/v1", b"/adv/dir/v2", b"/adv/s", b"/adv/u0", b"/secret/s",
            b"/adv/mp"]
NEW = [b"/adv/new", b"/adv/new/deeper", b"/advb/x", b"/new-b/y", b"/adv/k+1", b"/adv/a%20b",
       b"/adv/%C3%A9", b"/adv/new%2Fslash"]
BUCKETS = [b"/adv", b"/adv/", b"/advb", b"/secret", b"/new-b", b"/nob/"]
NAMES = [b"v0", b"v1", b"dir", b"v2", b"u0", b"s", b"mp", b"new", b"x", b"k+1", b"a%20b",
         b"%C3%A9"]
segment = weighted(
    (6, st.sampled_from(NAMES)),
    (3, st.sampled_from([b"..", b".", b"", b"%2e%2e", b"%2E", b"%2F", b"%00", b"%0D%0A",
                         b"%FF%FE", b"%C0%AF", b"%", b"%zz", b"%2", b"~", b";", b"a;b=c", b"*",
                         b"%2e", b"%252e"])),
    (2, st.binary(min_size=1, max_size=8).map(esc)),
    (1, st.integers(100, 400).map(lambda n: b"L" * n)),
    (2, in_url),
    (1, st.binary(min_size=1, max_size=4).filter(lambda b: not set(b) & set(b" \r\n?#"))),
)


@st.composite
def odd_paths(draw) -> bytes:
    """A request target no client would send."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from([b"*", b"http://evil.example/adv/v0", b"adv/v0", b"/", b"//",
                                     b"//adv//v0", b"/adv/v0/", b"/%2Fadv/v0", b"/adv/v0#frag",
                                     b"/adv/./v0", b"/adv/../secret/s", b"/adv%2F..%2Fsecret/s"]))
    bucket = draw(weighted((3, st.sampled_from([b"adv", b"secret", b"new-b", b"Adv", b"a..b"])),
                           (1, segment)))
    joiner = b"//" if draw(st.integers(0, 5)) == 0 else b"/"
    return b"/" + bucket + b"/" + joiner.join(draw(st.lists(segment, min_size=1, max_size=4)))


object_path = weighted((6, st.sampled_from(EXISTING)), (3, st.sampled_from(NEW)),
                       (2, odd_paths()))
bucket_path = weighted((6, st.sampled_from(BUCKETS)), (1, odd_paths()))

# query parameters
INTS = [b"0", b"1", b"2", b"3", b"1000", b"1001", b"-1", b"99999999999999999999", b"x", b"",
        b"1.5", b"+1", b"%201", b"0x10"]
PREFIXES = [b"", b"v", b"dir", b"dir%2F", b"s", b"n", b"%FF", b"%C3", b"%00", b"AWSAccessKeyId=x",
            b"X-Amz-Signature=x"]
DELIMITERS = [b"%2F", b"/", b"", b"v", b"%00", b"dir"]
TOKENS = [base64.urlsafe_b64encode(k) for k in (b"/adv/v1", b"/adv/", b"", b"\xff", b"/zzz")] \
    + [b"!!", b"=", b"%3D%3D", b"AAAA"]
UPLOADS = [b"@UPLOAD@", b"@UPLOAD@", b"0" * 32, b"..%2Fx", b""]
RESPONSE_PARAMS = [b"response-content-type", b"response-content-disposition",
                   b"response-content-encoding", b"response-content-language",
                   b"response-cache-control", b"response-expires"]
RESPONSE_VALUES = [b"text/plain", b"attachment%3B%20filename%3D%22x%22", b"gzip", b"en",
                   b"no-cache", b"Thu%2C%2001%20Jan%202099%2000%3A00%3A00%20GMT", b""]
S3_PARAMS = [b"list-type", b"prefix", b"delimiter", b"max-keys", b"continuation-token",
             b"start-after", b"encoding-type", b"fetch-owner", b"marker", b"uploads", b"uploadId",
             b"partNumber", b"tagging", b"delete", b"x-id", b"location", b"versioning",
             b"versionId", b"max-uploads", b"key-marker", b"upload-id-marker", b"max-parts",
             b"part-number-marker", b"acl", *RESPONSE_PARAMS]
SIGNATURE_PARAMS = [b"X-Amz-Signature", b"X-Amz-Algorithm", b"X-Amz-Credential", b"X-Amz-Date",
                    b"X-Amz-Expires", b"X-Amz-SignedHeaders", b"X-Amz-Content-Sha256",
                    b"x-amz-signature", b"AWSAccessKeyId", b"Signature", b"Expires"]
NATIVE_PARAMS = [b"list", b"unlinked", b"writing", b"limit", b"start"]
param_name = weighted(
    (4, st.sampled_from(S3_PARAMS)), (2, st.sampled_from(NATIVE_PARAMS)),
    (1, st.sampled_from(SIGNATURE_PARAMS)),
    (1, st.sampled_from([b"", b"=", b"a", b"%00", b"%FF", b"list%00", b"LIST", b"x-amz-meta-a",
                         b"response-x", b"prefix%3D", b"%6Cist"])))
param_value = weighted(
    (3, st.sampled_from(INTS + PREFIXES + TOKENS + UPLOADS + RESPONSE_VALUES)),
    (1, st.text(max_size=12).map(lambda t: quote(t, safe="").encode())),
    (1, st.binary(max_size=12).map(esc)),
    (2, in_url),
    (1, st.sampled_from([  # signature fields, as values or smuggled into one
        b"AWSAccessKeyId=x", b"X-Amz-Signature=x", b"x-amz-signature=", b"AWSAccessKeyId%3Dx",
        b"STREAMING-UNSIGNED-PAYLOAD-TRAILER", b"AWS4-HMAC-SHA256", b"UNSIGNED-PAYLOAD",
        f"{ACCESS}%2F20200101%2F{REGION}%2Fs3%2Faws4_request".encode(), b"20200101T000000Z",
        b"20201301T000000Z", b"99999999T999999Z", b"host", b"host%3Bx-amz-date", b"604801",
        ACCESS.encode()])),
    (1, in_header_raw.filter(lambda b: b" " not in b)),  # raw control bytes in the request line
)


def http_date(offset: float) -> bytes:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + offset)).encode()


def amz_date(offset: float = 0) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + offset))


PART_ETAG = '"' + hashlib.md5(b"part").hexdigest() + '"'  # the fixture's uploads' one part
RANGES = [b"bytes=0-0", b"bytes=0-", b"bytes=-1", b"bytes=5-1", b"bytes=0-1,2-3",
          b"bytes=99999999999999999999-", b"bytes=-0", b"bytes=", b"items=0-1",
          b"bytes=0-18446744073709551616", b"bytes = 1 - 2", b"bytes=2-4"]
DATES = [http_date(0), http_date(-86400 * 400), http_date(86400 * 400), b"junk", b"",
         b"Thu, 01 Jan 1970 00:00:00 GMT", b"Sun, 31 Dec 9999 23:59:59 GMT", b"0",
         amz_date().encode()]
AUTHORIZATIONS = [
    b"AWS4-HMAC-SHA256", b"AWS4-HMAC-SHA256 ", b"AWS4-HMAC-SHA256 Credential=",
    f"AWS4-HMAC-SHA256 Credential={ACCESS}/20200101/{REGION}/s3/aws4_request, "
    f"SignedHeaders=host, Signature=00".encode(),
    f"AWS4-HMAC-SHA256 Credential={ACCESS}/{amz_date()[:8]}/{REGION}/s3/aws4_request,"
    f"SignedHeaders=host;x-amz-date;x-amz-content-sha256,Signature={'0' * 64}".encode(),
    b"AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=, Signature=",
    b"AWS4-HMAC-SHA256 Credential=x/y/z/w/aws4_request,SignedHeaders=nohost,Signature=1",
    b"AWS4-HMAC-SHA256 Credential=,,,,=,=", b"AWS ", b"AWS", b"AWS :",
    f"AWS {ACCESS}:".encode(), f"AWS {ACCESS}:c2lnbmF0dXJl".encode(), b"AWS nobody:x",
    b"AWS4-HMAC-SHA512 x", b"Bearer x", b"Basic YTpi", b"aws4-hmac-sha256 x",
]
COPY_SOURCES = [b"/secret/s", b"secret/s", b"/adv/v0", b"adv/v1", b"/adv/v0?versionId=null",
                b"/secret/s?versionId=1", b"%2Fsecret%2Fs", b"/adv/../secret/s", b"/", b"",
                b"/nobucket/x", b"/adv", b"/adv/", b"/adv/%00", b"/adv/%FF", b"/adv/u0",
                b"/adv/" + b"L" * 300, b"/adv/%zz", b"/adv/s"]
SHA_VALUES = [b"UNSIGNED-PAYLOAD", b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
              b"STREAMING-UNSIGNED-PAYLOAD-TRAILER", b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
              hashlib.sha256(b"").hexdigest().encode(), b"0" * 64, b"zz", b"", b"@SHA@",
              b"@SHA@"]
SPECIFIC: dict[bytes, list[bytes]] = {
    b"authorization": AUTHORIZATIONS,
    b"x-amz-date": [amz_date().encode(), b"20200101T000000Z", b"99999999T999999Z", b"junk",
                    b"", http_date(0)],
    b"date": DATES,
    b"x-amz-content-sha256": SHA_VALUES,
    b"content-md5": [b"@MD5@", b"@MD5@", b"@MD5@", b"1B2M2Y8AsgTpgAmY7PhCfg==", b"!!", b"",
                     b"AAAA"],
    b"x-amz-checksum-crc32": [b"AAAAAA==", b"junk", b""],
    b"x-amz-checksum-crc32c": [b"AAAAAA==", b"!"],
    b"x-amz-checksum-sha256": [b"@SHA64@", b"@SHA64@", base64.b64encode(b"\0" * 32), b"x"],
    b"x-amz-checksum-crc64nvme": [b"AAAAAAAAAAA=", b"x"],
    b"x-amz-sdk-checksum-algorithm": [b"CRC32", b"SHA256", b"CRC64NVME", b"junk"],
    b"range": RANGES,
    b"x-amz-copy-source-range": RANGES,
    b"if-match": [b"*", b'"x"', b'W/"x"', b"", b",,,", b'"' + hashlib.md5(b"victim zero")
                  .hexdigest().encode() + b'"'],
    b"if-none-match": [b"*", b'"x"', b"", b"W/*"],
    b"if-modified-since": DATES,
    b"if-unmodified-since": DATES,
    b"x-amz-copy-source-if-match": [b"*", b'"x"'],
    b"x-amz-copy-source-if-none-match": [b"*", b'"x"'],
    b"x-amz-copy-source-if-modified-since": DATES,
    b"x-amz-copy-source-if-unmodified-since": DATES,
    b"content-type": [b"text/plain", b"application/xml", b"multipart/form-data",
                      b"multipart/form-data; boundary=", b"multipart/form-data; boundary=B",
                      b"MULTIPART/FORM-DATA; boundary=B", b"multipart/form-data;boundary=\"B\"",
                      b"application/x-www-form-urlencoded", b"", b"text/html; charset=utf-8"],
    b"content-encoding": [b"aws-chunked", b"gzip", b"aws-chunked, gzip", b"identity", b","],
    b"content-disposition": [b'attachment; filename="x"', b"inline", b""],
    b"content-language": [b"en", b"de-CH"],
    b"cache-control": [b"no-cache", b"max-age=5"],
    b"expires": DATES,
    b"expect": [b"100-continue", b"100-CONTINUE", b"junk"],
    b"x-amz-copy-source": COPY_SOURCES,
    b"x-amz-metadata-directive": [b"COPY", b"REPLACE", b"copy", b"junk"],
    b"x-amz-tagging-directive": [b"COPY", b"REPLACE", b"junk"],
    b"x-amz-tagging": [b"a=b", b"a=b&c=d", b"a", b"=", b"%", b"&".join(
        b"k%d=v" % i for i in range(11)), b"a=%0D%0A", b"a=" + b"v" * 300],
    b"x-amz-meta-a": [b"1", b"\xc3\xa9", b"x" * 2100, b" padded "],
    b"x-amz-meta-who": [b"victim", b"=?UTF-8?B?w6k=?="],
    b"x-amz-decoded-content-length": [b"0", b"5", b"-1", b"99999999999999999999", b"x",
                                      b"@LEN@"],
    b"x-amz-trailer": [b"x-amz-checksum-crc32", b"x-amz-checksum-junk", b""],
    b"x-amz-if-match-size": [b"0", b"-1", b"x"],
    b"x-amz-if-match-last-modified-time": DATES,
    b"amz-sdk-invocation-id": [str(uuid.UUID(int=7)).encode()],
    b"amz-sdk-request": [b"attempt=1; max=1"],
    b"host": [b"x", b"", b"evil.example", b"127.0.0.1:1"],
    b"connection": [b"close", b"keep-alive", b"upgrade", b"Upgrade, HTTP2-Settings"],
    b"upgrade": [b"websocket", b"h2c"],
    b"x-amz-acl": [b"private", b"public-read", b"junk"],
    b"x-amz-storage-class": [b"STANDARD", b"GLACIER"],
}
OTHER_NAMES = [b"X-Amz-Meta-MixedCase", b"x-amz-meta-", b"x-amz-website-redirect-location",
               b"x-amz-server-side-encryption", b"x-amz-expected-bucket-owner", b"x-junk",
               b"x-amz-", b"origin"]
BAD_NAMES = [b"a b", b":", b"x\x7f", b"\xc3\xa9", b"x-amz-meta-\xff", b"transfer-encoding"]
header_name = weighted((12, st.sampled_from(list(SPECIFIC) + OTHER_NAMES)),
                       (1, st.sampled_from(BAD_NAMES)))
header_value = weighted(
    (4, st.sampled_from([b"", b"1", b"*", b"abc", b"0", b"-1", b"99999999999999999999999",
                         b"text/plain", b"aws-chunked", b"/secret/s", b"REPLACE", b"\xc3\xa9",
                         b"chunked", b"gzip, chunked"])),
    (2, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
        str.encode)),
    (3, in_header),
    (1, st.one_of(  # what the HTTP parser itself refuses, or splits
        st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b),
        in_header_raw,
        st.integers(70_000, 80_000).map(lambda n: b"H" * n))),  # past the 64 KiB limit
)


def value_of(name: bytes) -> st.SearchStrategy:
    """A value for header `name`: one it is meant to hold, mostly; else anything."""
    if name in SPECIFIC:
        return weighted((6, st.sampled_from(SPECIFIC[name])), (1, in_header), (1, header_value))
    return header_value


@st.composite
def some_headers(draw, names: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Some of the headers an operation takes (each about one time in three)."""
    return [(name, draw(value_of(name))) for name in names if draw(st.integers(0, 2)) == 0]


bodies = weighted((8, st.binary(min_size=1, max_size=300)),  # empty: a cut-off never begins
                  (1, st.sampled_from([b"", b"hello", b"x" * 70_000])))


@st.composite
def forms(draw) -> tuple[bytes, str, bytes, str, list[tuple[str, str]]]:
    """A POST Object form's makings: boundary, file name, file, how it ends, the fields before
    the file (form_bytes makes the body)."""
    boundary = draw(st.sampled_from([b"B", b"----adv", b"a" * 70, b"q\"b"]))
    names = ["key", "Content-Type", "x-amz-meta-a", "success_action_redirect", "redirect",
             "success_action_status", "acl", "policy", "x-amz-algorithm", "x-amz-credential",
             "x-amz-date", "x-amz-signature", "AWSAccessKeyId", "signature", "Cache-Control",
             "Content-Disposition", "Expires", "tagging", "x-ignore-x", "", "a b"]
    field_value = weighted(
        (4, st.sampled_from(["adv-form-${filename}", "v0", "../x", "", "a" * 1100,
                             "dir/${filename}", "201", "200", "204", "http://evil.example/",
                             "javascript:alert(1)", "text/html", "secret/s", "%00", "new"])),
        (2, injection), (1, st.text(max_size=20)))
    fields = [("key", draw(field_value))] if draw(st.integers(0, 4)) else []
    fields += draw(st.lists(st.tuples(st.sampled_from(names), field_value), max_size=5))
    filename = draw(weighted((3, st.sampled_from(["f.txt", "", "../../etc/passwd", "a\"b"])),
                             (1, injection)))
    content = draw(st.binary(max_size=200))
    ending = draw(st.sampled_from(["end", "end", "end", "none", "after", "no-file",
                                   "truncated"]))
    return boundary, filename, content, ending, fields


def form_bytes(boundary: bytes, filename: str, content: bytes, ending: str,
               fields: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    def part(name: str, value: bytes, extra: str = "") -> bytes:
        return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name.encode()
                + b"\"" + extra.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + value + b"\r\n")
    body = b"".join(part(n, v.encode("utf-8", "surrogateescape")) for n, v in fields)
    if ending != "no-file":
        body += part("file", content, f"; filename=\"{filename}\"")
    if ending == "after":
        body += part("x-after", b"ignored")
    if ending != "none":
        body += b"--" + boundary + b"--\r\n"
    if ending == "truncated":
        body = body[:len(body) // 2]
    quoted = b'"' + boundary + b'"' if b'"' in boundary else boundary
    return b"multipart/form-data; boundary=" + quoted, body


xml_text = weighted((5, st.sampled_from(["v0", "new", "../secret/s", "", "a" * 1100, "&amp;",
                                         "<![CDATA[v1]]>", "u0", "dir/v2", "s", "\udcff"])),
                    (2, in_xml))


@st.composite
def delete_xml(draw) -> bytes:
    keys = draw(st.lists(xml_text, max_size=4))
    quiet = draw(st.sampled_from(["", "<Quiet>true</Quiet>", "<Quiet>x</Quiet>"]))
    return ("<Delete>" + quiet + "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
            + "</Delete>").encode("utf-8", "surrogateescape")


@st.composite
def complete_xml(draw) -> bytes:
    parts = draw(st.lists(st.tuples(
        st.sampled_from(["1", "1", "2", "0", "-1", "10001", "x", "99999999999999999999"]),
        weighted((4, st.sampled_from([PART_ETAG, PART_ETAG.strip('"'), '"x"', ""])),
                 (1, in_xml))), max_size=3))
    return ("<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
        + "</CompleteMultipartUpload>").encode()


@st.composite
def tagging_xml(draw) -> bytes:
    tags = draw(st.lists(st.tuples(xml_text, xml_text), max_size=3))
    return ("<Tagging><TagSet>" + "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>"
                                          for k, v in tags) + "</TagSet></Tagging>").encode(
        "utf-8", "surrogateescape")


@st.composite
def acl_xml(draw) -> bytes:
    grants = draw(st.lists(st.tuples(
        weighted((3, st.sampled_from([
            '<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="Group">'
            "<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee>",
            "<Grantee><ID>AKIDADVERSARY</ID></Grantee>", "<Grantee><ID>nobody</ID></Grantee>",
            "<Grantee><EmailAddress>a@b</EmailAddress></Grantee>", "<Grantee/>"])),
                 (1, in_xml)),
        st.sampled_from(["READ", "WRITE", "FULL_CONTROL", "READ_ACP", "x", ""])), max_size=3))
    owner = draw(weighted((4, st.just("AKIDADVERSARY")), (1, st.just("someone")), (1, in_xml)))
    return (f"<AccessControlPolicy><Owner><ID>{owner}</ID></Owner><AccessControlList>"
            + "".join(f"<Grant>{g}<Permission>{p}</Permission></Grant>" for g, p in grants)
            + "</AccessControlList></AccessControlPolicy>").encode("utf-8", "surrogateescape")


@st.composite
def lifecycle_xml(draw) -> bytes:
    rules = draw(st.lists(st.tuples(
        weighted((3, st.sampled_from(["r1", "r2", ""])), (1, in_xml)),
        st.sampled_from(["<Filter><Prefix>adv/</Prefix></Filter>", "<Prefix></Prefix>",
                         "<Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter>", "",
                         "<Filter><And><Prefix>p</Prefix><ObjectSizeGreaterThan>9"
                         "</ObjectSizeGreaterThan><ObjectSizeLessThan>2</ObjectSizeLessThan>"
                         "</And></Filter>"]),
        st.sampled_from(["Enabled", "Disabled", "enabled"]),
        st.sampled_from(["<Expiration><Days>3650</Days></Expiration>",
                         "<Expiration><Days>0</Days></Expiration>",
                         "<Expiration><Date>2999-01-01T00:00:00Z</Date></Expiration>",
                         "<Expiration><Date>2020-01-01T10:00:00Z</Date></Expiration>",
                         "<AbortIncompleteMultipartUpload><DaysAfterInitiation>3650"
                         "</DaysAfterInitiation></AbortIncompleteMultipartUpload>",
                         "<Transition><Days>1</Days></Transition>", ""])), max_size=3))
    return ("<LifecycleConfiguration>" + "".join(
        f"<Rule><ID>{i}</ID>{f}<Status>{s}</Status>{a}</Rule>" for i, f, s, a in rules)
        + "</LifecycleConfiguration>").encode("utf-8", "surrogateescape")


junk_xml = st.sampled_from([
    b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
    b"<Delete><Object><Key>&b;</Key></Object></Delete>",
    b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Delete><Object><Key>&e;'
    b"</Key></Object></Delete>",
    b"<Delete>", b"not xml", b"<?xml version='1.0' encoding='UTF-16'?><a/>", b"\xff\xfe<",
    b"<Delete><Object><Key>v0</Key></Object>" * 2 + b"</Delete>", b""])


# --- operations: requests as clients make them, before the adversary changes them ---


@dataclass
class Draft:
    """A request being made: an operation's, then mutated, signed and framed."""

    op: str
    method: bytes
    path: bytes
    params: list[tuple[bytes, bytes | None]]
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    @property
    def query(self) -> bytes:
        return b"&".join(n if v is None else n + b"=" + v for n, v in self.params)


PUT_HEADERS = [b"content-type", b"content-md5", b"x-amz-meta-a", b"x-amz-meta-who",
               b"x-amz-tagging", b"cache-control", b"content-disposition", b"expires",
               b"content-language", b"content-encoding", b"x-amz-checksum-crc32",
               b"x-amz-checksum-sha256", b"x-amz-sdk-checksum-algorithm",
               b"x-amz-storage-class", b"x-amz-content-sha256", b"expect"]
GET_HEADERS = [b"range", b"if-match", b"if-none-match", b"if-modified-since",
               b"if-unmodified-since"]
COPY_HEADERS = [b"x-amz-metadata-directive", b"x-amz-tagging-directive",
                b"x-amz-copy-source-if-match", b"x-amz-copy-source-if-none-match",
                b"x-amz-copy-source-if-modified-since", b"x-amz-copy-source-if-unmodified-since",
                b"content-type", b"x-amz-meta-a", b"x-amz-tagging"]
S3_OPS = {  # operation → how often
    "GetObject": 5, "HeadObject": 2, "PutObject": 5, "CopyObject": 3, "DeleteObject": 2,
    "ListObjectsV2": 3, "ListObjects": 1, "ListBuckets": 1, "HeadBucket": 1, "CreateBucket": 1,
    "DeleteBucket": 1, "GetBucketLocation": 1, "CreateMultipartUpload": 2, "UploadPart": 2,
    "UploadPartCopy": 1, "CompleteMultipartUpload": 2, "AbortMultipartUpload": 1,
    "ListParts": 1, "ListMultipartUploads": 1, "DeleteObjects": 2, "GetObjectTagging": 1,
    "PutObjectTagging": 2, "DeleteObjectTagging": 1, "GetBucketAcl": 1, "PutBucketAcl": 2,
    "GetObjectAcl": 1, "PutObjectAcl": 2, "GetBucketLifecycle": 1, "PutBucketLifecycle": 2,
    "DeleteBucketLifecycle": 1, "Unsupported": 1}
ACL_HEADERS = [b"x-amz-acl", b"x-amz-grant-read", b"x-amz-grant-write",
               b"x-amz-grant-full-control"]
ACL_VALUES = [b"private", b"public-read", b"public-read-write", b"authenticated-read",
              b"everyone", b'id="AKIDADVERSARY"', b'id="nobody"',
              b'uri="http://acs.amazonaws.com/groups/global/AllUsers"', b'emailAddress="a@b"']
NATIVE_OPS = {"GET": 3, "HEAD": 1, "PUT": 3, "REPLACE": 3, "DELETE": 2, "UNLINK": 2,
              "RELINK": 2, "REBALANCE": 1, "listing": 3}


def ops(table: dict[str, int]) -> st.SearchStrategy:
    return st.sampled_from([op for op, weight in table.items() for _ in range(weight)])


@st.composite
def params(draw, *spec: tuple[bytes, list[bytes]]) -> list[tuple[bytes, bytes | None]]:
    """Some of the parameters of `spec` (name, values), each about one time in two."""
    return [(name, draw(or_injected(values))) for name, values in spec
            if draw(st.booleans())]


@st.composite
def s3_draft(draw) -> Draft:
    op = draw(ops(S3_OPS))
    obj, bucket = draw(object_path), draw(bucket_path)
    get = draw(some_headers(GET_HEADERS))
    put = draw(some_headers(PUT_HEADERS))
    upload = [(b"uploadId", draw(or_injected(UPLOADS)))]
    part = [(b"partNumber", draw(or_injected([b"1", b"1", b"2", b"0", b"10001", b"x"])))]
    if op in ("GetObject", "HeadObject"):
        p = [(name, draw(or_injected(RESPONSE_VALUES))) for name in RESPONSE_PARAMS
             if draw(st.integers(0, 3)) == 0]
        if draw(st.integers(0, 9)) == 0:
            p += part
        return Draft(op, b"GET" if op == "GetObject" else b"HEAD", obj, p, get)
    if op == "PutObject":
        return Draft(op, b"PUT", obj, [], put, draw(bodies))
    if op == "CopyObject":
        source = [(b"x-amz-copy-source", draw(or_injected(COPY_SOURCES, in_header)))]
        return Draft(op, b"PUT", obj, [], source + draw(some_headers(COPY_HEADERS)))
    if op == "DeleteObject":
        return Draft(op, b"DELETE", obj, [], draw(some_headers([b"if-match"])))
    if op == "ListObjectsV2":
        return Draft(op, b"GET", bucket, [(b"list-type", b"2")] + draw(params(
            (b"prefix", PREFIXES), (b"delimiter", DELIMITERS), (b"max-keys", INTS),
            (b"continuation-token", TOKENS), (b"start-after", PREFIXES),
            (b"encoding-type", [b"url", b"x"]), (b"fetch-owner", [b"true"]))), [])
    if op == "ListObjects":
        return Draft(op, b"GET", bucket, draw(params(
            (b"prefix", PREFIXES), (b"delimiter", DELIMITERS), (b"max-keys", INTS),
            (b"marker", PREFIXES), (b"encoding-type", [b"url"]))), [])
    if op == "ListBuckets":
        return Draft(op, b"GET", b"/", [], [])
    if op in ("HeadBucket", "CreateBucket", "DeleteBucket"):
        method = {"HeadBucket": b"HEAD", "CreateBucket": b"PUT", "DeleteBucket": b"DELETE"}[op]
        return Draft(op, method, bucket, [], [])
    if op == "GetBucketLocation":
        return Draft(op, b"GET", bucket, [(b"location", None)], [])
    if op == "CreateMultipartUpload":
        return Draft(op, b"POST", obj, [(b"uploads", None)], put)
    if op == "UploadPart":
        return Draft(op, b"PUT", obj, part + upload, put, draw(bodies))
    if op == "UploadPartCopy":
        return Draft(op, b"PUT", obj, part + upload, [
            (b"x-amz-copy-source", draw(or_injected(COPY_SOURCES, in_header))),
            *draw(some_headers([b"x-amz-copy-source-range", b"x-amz-copy-source-if-match"]))])
    if op == "CompleteMultipartUpload":
        return Draft(op, b"POST", obj, upload, [], draw(weighted((5, complete_xml()),
                                                                  (1, junk_xml))))
    if op == "AbortMultipartUpload":
        return Draft(op, b"DELETE", obj, upload, [])
    if op == "ListParts":
        return Draft(op, b"GET", obj, upload + draw(params(
            (b"max-parts", INTS), (b"part-number-marker", INTS))), [])
    if op == "ListMultipartUploads":
        return Draft(op, b"GET", bucket, [(b"uploads", None)] + draw(params(
            (b"prefix", PREFIXES), (b"delimiter", DELIMITERS), (b"max-uploads", INTS),
            (b"key-marker", PREFIXES), (b"upload-id-marker", UPLOADS))), [])
    if op == "DeleteObjects":
        return Draft(op, b"POST", bucket, [(b"delete", None)],
                     draw(some_headers([b"content-md5", b"content-md5", b"x-amz-checksum-sha256",
                                        b"content-type"])),
                     draw(weighted((5, delete_xml()), (1, junk_xml))))
    if op in ("GetObjectTagging", "PutObjectTagging", "DeleteObjectTagging"):
        method = {"GetObjectTagging": b"GET", "PutObjectTagging": b"PUT",
                  "DeleteObjectTagging": b"DELETE"}[op]
        body = draw(weighted((5, tagging_xml()), (1, junk_xml))) if method == b"PUT" else b""
        return Draft(op, method, obj, [(b"tagging", None)], [], body)
    if op in ("GetBucketAcl", "PutBucketAcl", "GetObjectAcl", "PutObjectAcl"):
        put = op.startswith("Put")
        headers = [(name, draw(or_injected(ACL_VALUES, in_header))) for name in ACL_HEADERS
                   if put and draw(st.integers(0, 2)) == 0]
        body = draw(weighted((5, acl_xml()), (1, junk_xml))) if put and not headers else b""
        return Draft(op, b"PUT" if put else b"GET", bucket if "Bucket" in op else obj,
                     [(b"acl", None)], headers, body)
    if op in ("GetBucketLifecycle", "PutBucketLifecycle", "DeleteBucketLifecycle"):
        method = {"Get": b"GET", "Put": b"PUT", "Del": b"DELETE"}[op[:3]]
        body = draw(weighted((5, lifecycle_xml()), (1, junk_xml))) if method == b"PUT" else b""
        return Draft(op, method, bucket, [(b"lifecycle", None)], [], body)
    assert op == "Unsupported"
    return Draft(op, draw(st.sampled_from([b"GET", b"PUT"])), draw(st.sampled_from([obj, bucket])),
                 [(draw(st.sampled_from([b"policy", b"cors", b"versions", b"torrent",
                                         b"select", b"restore"])), None)], [])


@st.composite
def native_draft(draw) -> Draft:
    op = draw(ops(NATIVE_OPS))
    key = draw(object_path)
    if op == "listing":
        prefix = draw(weighted((4, st.sampled_from([b"/", b"/adv", b"/adv/", b"/adv/v", b"/x"])),
                               (1, object_path)))
        what = draw(weighted((6, st.sampled_from([b"list", b"unlinked", b"writing"])),
                             (1, st.sampled_from([b"lists", b"LIST", b"list%00", b""]))))
        return Draft(op, b"GET", prefix, [(what, None), *draw(params(
            (b"limit", INTS), (b"start", [b"/adv/v1", b"", b"%FF", b"/adv/dir%2Fv2"])))], [])
    body = draw(bodies) if op in ("PUT", "REPLACE") else b""
    return Draft(op, op.encode(), key, [], [], body)


# the operations that read their body: cut off, they must not take effect (others may)
BODY_OPS = frozenset(("PutObject", "UploadPart", "CompleteMultipartUpload", "DeleteObjects",
                      "PutObjectTagging", "PostObject", "PUT", "REPLACE", "PutBucketAcl",
                      "PutObjectAcl", "PutBucketLifecycle"))
MUTATIONS = ["inject-param"] * 3 + ["inject-header"] * 3 + ["inject-path"] * 2 + [
    "extra-param"] * 2 + ["extra-header"] * 2 + ["smuggle-signature"] * 2 + [
    "odd-path", "method", "dup-header", "drop-header", "body"]
SMUGGLED = [b"AWSAccessKeyId=x", b"X-Amz-Signature=x", b"x-amz-signature=", b"AWSAccessKeyId=",
            b"Signature=x%26Expires=1"]


@st.composite
def mutated(draw, d: Draft, most: int) -> list[str]:
    """Change the draft as an adversary would: the mark injected into its strings, parameters
    and headers added, dropped or doubled, its path or method swapped. What was done."""
    done = []
    for _ in range(draw(st.integers(0, most))):
        what = draw(st.sampled_from(MUTATIONS))
        done.append(what)
        if what == "inject-param":
            if d.params and draw(st.booleans()):
                i = draw(st.integers(0, len(d.params) - 1))
                d.params[i] = (d.params[i][0], draw(in_url))
            else:
                d.params.append((draw(st.sampled_from(RESPONSE_PARAMS + S3_PARAMS)),
                                 draw(in_url)))
        elif what == "inject-header":
            if d.headers and draw(st.booleans()):
                i = draw(st.integers(0, len(d.headers) - 1))
                d.headers[i] = (d.headers[i][0], draw(in_header))
            else:
                d.headers.append((draw(st.sampled_from(list(SPECIFIC) + OTHER_NAMES)),
                                  draw(in_header)))
        elif what == "inject-path":
            d.path = d.path.rstrip(b"/") + b"/" + draw(in_url)
        elif what == "extra-param":
            d.params.append((draw(param_name), None if draw(st.integers(0, 3)) == 0
                             else draw(param_value)))
        elif what == "extra-header":
            d.headers.append((draw(header_name), draw(header_value)))
        elif what == "smuggle-signature":  # a signature's field inside another's value
            d.params.append((draw(st.sampled_from([b"prefix", b"marker", b"start", b"x-id",
                                                   b"response-content-type", b"list"])),
                             draw(st.sampled_from(SMUGGLED))))
        elif what == "odd-path":
            d.path = draw(odd_paths())
        elif what == "method":
            d.method = draw(weighted(
                (6, st.sampled_from(METHODS)),
                (1, st.sampled_from(["OPTIONS", "PATCH", "PROPFIND", "TRACE", "get", "REPLAC",
                                     "REPLACEX", "M-SEARCH", "X" * 300, "CONNECT", "PUT\x00",
                                     "GET\t"])))).encode()
        elif what == "dup-header" and d.headers:
            name = draw(st.sampled_from([n for n, _ in d.headers]))
            d.headers.append((name, draw(value_of(name))))
        elif what == "drop-header" and d.headers:
            d.headers.pop(draw(st.integers(0, len(d.headers) - 1)))
        elif what == "body":
            d.body = draw(weighted((3, bodies), (1, junk_xml)))
    return done


# --- signatures, made as a client makes them ---


def canonical_query(query: bytes, drop: str | None = None) -> str:
    pairs = []
    for item in query.split(b"&") if query else ():
        if item:
            name, _, value = item.partition(b"=")
            name_s = quote(unquote_to_bytes(name), safe="-_.~")
            if name_s != drop:
                pairs.append((name_s, quote(unquote_to_bytes(value), safe="-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def _value(value: bytes) -> str:
    return re.sub(r"\s+", " ", value.decode("utf-8", "surrogateescape").strip())


def signing_key(secret: str, date: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def v4_signature(secret: str, method: bytes, path: bytes, query: str,
                 seen: dict[bytes, bytes], signed: list[str], payload: str, stamp: str) -> str:
    lines = "".join(f"{n}:{_value(seen[n.encode('latin-1')])}\n" for n in signed)
    canonical = "\n".join((method.decode("latin-1"), path.decode("latin-1"), query, lines,
                           ";".join(signed), payload))
    scope = f"{stamp[:8]}/{REGION}/s3/aws4_request"
    string = "\n".join(("AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(
        canonical.encode("utf-8", "surrogateescape")).hexdigest()))
    return hmac.new(signing_key(secret, stamp[:8]), string.encode(), hashlib.sha256).hexdigest()


def signed_names(seen: dict[bytes, bytes]) -> list[str]:
    return sorted({"host"} | {n.decode("latin-1") for n in seen if n.startswith(b"x-amz-")}
                  | {n.decode() for n in (b"content-md5", b"content-type") if n in seen})


def as_seen(hdrs: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The headers as the master keeps them: lower-case names, the last value of each."""
    return {name.lower(): value for name, value in hdrs}


@dataclass
class Signing:
    mode: str  # header, presigned
    payload: str  # the payload hash signed
    stamp: str
    expires: bytes = b"3600"
    access: str = ACCESS
    secret: str = SECRET


def sign(s: Signing, method: bytes, path: bytes, query: bytes,
         hdrs: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The query and headers of the request signed (SigV4) as `s` says."""
    hdrs = [(n, v) for n, v in hdrs if n not in (b"authorization", b"x-amz-date",
                                                  b"x-amz-content-sha256", b"host")]
    hdrs.insert(0, (b"host", b"127.0.0.1"))
    credential = f"{s.access}/{s.stamp[:8]}/{REGION}/s3/aws4_request"
    if s.mode == "header":
        hdrs += [(b"x-amz-date", s.stamp.encode()), (b"x-amz-content-sha256", s.payload.encode())]
        seen = as_seen(hdrs)
        names = signed_names(seen)
        signature = v4_signature(s.secret, method, path, canonical_query(query), seen, names,
                                 s.payload, s.stamp)
        hdrs.append((b"authorization", f"AWS4-HMAC-SHA256 Credential={credential}, "
                     f"SignedHeaders={';'.join(names)}, Signature={signature}".encode()))
        return query, hdrs
    seen = as_seen(hdrs)
    names = signed_names(seen)
    params = [b"X-Amz-Algorithm=AWS4-HMAC-SHA256",
              b"X-Amz-Credential=" + quote(credential, safe="").encode(),
              b"X-Amz-Date=" + s.stamp.encode(), b"X-Amz-Expires=" + s.expires,
              b"X-Amz-SignedHeaders=" + quote(";".join(names), safe="").encode()]
    if s.payload != "UNSIGNED-PAYLOAD":
        params.append(b"X-Amz-Content-Sha256=" + s.payload.encode())
    query = b"&".join(([query] if query else []) + params)
    signature = v4_signature(s.secret, method, path, canonical_query(query), seen, names,
                             s.payload, s.stamp)
    return query + b"&X-Amz-Signature=" + signature.encode(), hdrs


def sign_form(fields: list[tuple[str, str]], bucket: str) -> list[tuple[str, str]]:
    """The fields with a SigV4-signed policy that names every one of them."""
    stamp = amz_date()
    fields = [(n, v) for n, v in fields if n.lower() not in (
        "policy", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature")]
    fields += [("x-amz-algorithm", "AWS4-HMAC-SHA256"),
               ("x-amz-credential", f"{ACCESS}/{stamp[:8]}/{REGION}/s3/aws4_request"),
               ("x-amz-date", stamp)]
    conditions = [{"bucket": bucket}] + [["starts-with", f"${n}", ""] for n, _ in fields]
    policy = base64.b64encode(json.dumps({"expiration": "2099-01-01T00:00:00Z",
                                          "conditions": conditions}).encode()).decode()
    signature = hmac.new(signing_key(SECRET, stamp[:8]), policy.encode(),
                         hashlib.sha256).hexdigest()
    return fields + [("policy", policy), ("x-amz-signature", signature)]


# --- a request ---


class Hostile:
    """One hostile request: where it goes, its bytes, and what the checks need to know."""

    __slots__ = ("target", "method", "data", "cut", "cut_needed", "names", "refuse",
                 "refuse_as_s3", "kinds")

    def __init__(self, target: str, method: bytes, data: bytes, cut: bool, cut_needed: bool,
                 names: bytes | None, refuse: str, refuse_as_s3: str,
                 kinds: tuple[str, ...]) -> None:
        self.target = target  # plain, keys (its main port) or keys-s3port
        self.method = method
        self.data = data  # every byte sent
        self.cut = cut  # half-closed after sending: its body cut off
        self.cut_needed = cut_needed  # and the request reads that body: it must not take effect
        self.names = names  # the key it names (a refused write may clear its unlinked files)
        self.refuse = refuse  # why the master must not answer 2xx ("": it may)
        self.refuse_as_s3 = refuse_as_s3  # why not, if S3 answers it (the native API is open)
        self.kinds = kinds  # flavour, operation, mutations, signature, framing: for the counts

    def __repr__(self) -> str:  # short: hypothesis prints it with every failure
        data = self.data if len(self.data) < 600 else self.data[:600] + b"..."
        refuse = self.refuse or self.refuse_as_s3
        return f"Hostile({self.target}, {self.kinds}, refuse={refuse!r}, cut={self.cut}, " \
            f"{data!r})"


def aws_chunked(body: bytes, bad: str, trailer: bool) -> bytes:
    pieces = [body[i:i + 100] for i in range(0, len(body), 100)]
    sig = b"" if trailer else b";chunk-signature=" + b"0" * 64
    out = b""
    for i, piece in enumerate(pieces):
        size = b"%x" % len(piece)
        if bad and i == 0:
            size = {"size": b"zz", "negative": b"-1", "huge": b"f" * 20, "more": b"%x" % (
                len(piece) + 7), "less": b"%x" % max(len(piece) - 1, 0), "crlf": size}[bad]
        out += size + sig + b"\r\n" + piece + (b"" if bad == "crlf" else b"\r\n")
    out += b"0" + sig + b"\r\n"
    if trailer:
        out += b"x-amz-checksum-crc32:AAAAAA==\r\n"
    return out + b"\r\n"


FRAMINGS = ["length"] * 8 + ["chunked", "cut", "chunked-cut"] * 2 + [
    "none", "short", "chunked-bad", "both", "aws-chunked", "aws-chunked-bad"]


def frame(framing: str, body: bytes, bad: str) -> tuple[list[tuple[bytes, bytes]], bytes, bool]:
    """The headers, wire bytes and hang-up of a body in `framing`."""
    if framing == "none":
        return [], b"", False
    if framing == "length":
        return [(b"content-length", b"%d" % len(body))], body, False
    if framing == "short":  # a length that stops short: the rest is read as another request
        return [(b"content-length", b"%d" % (len(body) // 2))], body, False
    if framing == "cut":  # a length never reached, then a hang-up
        return [(b"content-length", b"%d" % (len(body) + 10))], body, True
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 64]), body[i:i + 64])
                      for i in range(0, len(body), 64))
    te = [(b"transfer-encoding", b"chunked")]
    if framing == "chunked":
        return te, chunks + b"0\r\n\r\n", False
    if framing == "chunked-cut":
        return te, chunks[:len(chunks) * 2 // 3], True
    if framing == "chunked-bad":
        line = {"size": b"zz", "negative": b"-5", "huge": b"f" * 21, "more": b"ff",
                "less": b"1", "crlf": b"5\n"}[bad or "size"]
        return te, chunks + line + b"\r\nhello\r\n0\r\n\r\n", True
    if framing == "both":
        return te + [(b"content-length", b"%d" % len(body))], chunks + b"0\r\n\r\n", False
    raise AssertionError(framing)


@st.composite
def hostile(draw, flavour: str) -> Hostile:
    """A hostile request. `flavour`: native (SPEC §4's operations), s3 (S3's, signed where the
    master has keys), signed (S3's, signed, then maybe altered), form (POST Object)."""
    if flavour == "native":
        target = draw(st.sampled_from(["plain", "keys"]))
    elif flavour == "signed":
        target = draw(st.sampled_from(["keys", "keys-s3port"]))
    else:
        target = draw(st.sampled_from(TARGETS))
    keyed = target != "plain"
    master = "plain" if target == "plain" else "keys"
    form_signed = False
    if flavour == "form":
        path = draw(bucket_path)
        bucket = path.strip(b"/").decode("latin-1")
        boundary, filename, content, ending, fields = draw(forms())
        form_signed = keyed and draw(st.integers(0, 3)) > 0
        if form_signed:
            fields = sign_form(fields, bucket)
        content_type, body = form_bytes(boundary, filename, content, ending, fields)
        d = Draft("PostObject", b"POST", path, [], draw(some_headers(
            [b"x-amz-meta-a", b"amz-sdk-invocation-id", b"expect"])), body)
        d.headers.append((b"content-type", content_type))
        key_field = dict(fields).get("key")
        done = draw(mutated(d, 1))
    else:
        d = draw(native_draft() if flavour == "native" else s3_draft())
        if flavour != "native" and draw(st.booleans()):  # an SDK's: S3's on the main port
            d.headers.append((b"amz-sdk-invocation-id", str(uuid.UUID(
                int=draw(st.integers(0, 9)))).encode()))
        done = draw(mutated(d, 1 if flavour == "signed" else 3))
    kinds = [flavour, d.op, *(f"mutation:{m}" for m in done)]
    if form_signed:
        kinds.append("form-signed")
    if d.path[:1] != b"/":
        names = None
    elif flavour == "form" and key_field is not None:
        names = f"/{bucket}/{key_field.replace('${filename}', filename)}".encode(
            "utf-8", "surrogateescape")
    else:
        names = unquote_to_bytes(d.path)

    framing = draw(st.sampled_from(FRAMINGS)) if d.body or draw(st.integers(0, 5)) == 0 \
        else "none"
    bad = draw(st.sampled_from(["", "size", "negative", "huge", "more", "less", "crlf"]))
    trailer = draw(st.booleans())
    if framing.startswith("aws-chunked"):
        d.headers += [(b"content-encoding", b"aws-chunked"),
                      (b"x-amz-decoded-content-length", b"%d" % len(d.body)),
                      (b"x-amz-content-sha256", b"STREAMING-UNSIGNED-PAYLOAD-TRAILER" if trailer
                       else b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD")]
        if trailer:
            d.headers.append((b"x-amz-trailer", b"x-amz-checksum-crc32"))

    # placeholders, filled in from what will be sent
    filled = {b"@MD5@": base64.b64encode(hashlib.md5(d.body).digest()),
              b"@SHA@": hashlib.sha256(d.body).hexdigest().encode(),
              b"@SHA64@": base64.b64encode(hashlib.sha256(d.body).digest()),
              b"@LEN@": b"%d" % len(d.body)}
    d.headers = [(n, filled.get(v, v)) for n, v in d.headers]
    upload = UPLOAD_IDS.get(master, "none").encode()
    d.params = [(n, v.replace(b"@UPLOAD@", upload) if v else v) for n, v in d.params]

    # a signature: made right, then maybe altered (the keys master must refuse what was)
    refuse, tamper, query = "", "none", d.query
    if flavour in ("s3", "signed") and (keyed or draw(st.integers(0, 4)) == 0):
        signing = draw(st.sampled_from(["header", "presigned"]) if flavour == "signed" else
                       weighted((2, st.sampled_from(["header", "presigned"])),
                                (1, st.sampled_from(["none", "junk"]))))
    else:
        signing = "none"
    if signing == "junk":
        d.headers.append((b"authorization", draw(st.sampled_from(AUTHORIZATIONS))))
    elif signing != "none":
        payload = draw(st.sampled_from(["UNSIGNED-PAYLOAD", "sha"]))
        if framing.startswith("aws-chunked") and signing == "header":
            payload = as_seen(d.headers)[b"x-amz-content-sha256"].decode()
        elif payload == "sha":
            payload = hashlib.sha256(d.body).hexdigest()
        s = Signing(signing, payload, amz_date())
        if flavour == "signed" and draw(st.integers(0, 2)):
            tamper = draw(st.sampled_from(["amz-header", "copy-source", "body", "host", "query",
                                           "path", "date", "expires", "secret", "access"]))
        if tamper == "date":
            s.stamp = amz_date(draw(st.sampled_from([-86400 * 2, 3600, -3600])))
            s.expires = b"60"
        elif tamper == "expires" and signing == "presigned":
            s.expires = draw(st.sampled_from([b"0", b"604801", b"-5", b"abc",
                                              b"99999999999999999999"]))
        elif tamper == "secret":
            s.secret = "not the secret"
        elif tamper == "access":
            s.access = "NOBODY"
        if tamper == "expires" and signing == "header" or tamper == "body" and (
                payload == "UNSIGNED-PAYLOAD" or payload.startswith("STREAMING")):
            tamper = "none"  # nothing signed to alter
        query, d.headers = sign(s, d.method, d.path, query, d.headers)
        if tamper == "amz-header":
            d.headers.append(draw(st.sampled_from([(b"x-amz-meta-tamper", b"1"),
                                                   (b"x-amz-tagging", b"a=b"),
                                                   (b"x-amz-metadata-directive", b"REPLACE"),
                                                   (b"x-amz-acl", b"public-read")])))
        elif tamper == "copy-source":
            d.headers.append((b"x-amz-copy-source", b"/secret/s"))
        elif tamper == "body":
            d.body += b"!"
            framing = "length" if framing == "none" else framing
        elif tamper == "host":
            d.headers = [(n, b"evil.example" if n == b"host" else v) for n, v in d.headers]
        elif tamper == "query":
            query += b"&uploads"
        elif tamper == "path":
            d.path += b"x"
        if tamper != "none":
            refuse = f"signed, then altered ({tamper})"
    kinds += [f"sign:{signing}", f"tamper:{tamper}"]
    form_valid = form_signed and d.method == b"POST" and not query
    refuse_as_s3 = ""
    if keyed and signing in ("none", "junk") and not form_valid:
        seen = as_seen(d.headers)
        sent = {item.partition(b"=")[0] for item in query.split(b"&")}
        if target == "keys-s3port":
            refuse = "unsigned, on the S3 port"
        elif seen.get(b"authorization", b"").startswith(b"AWS") \
                or sent & {b"X-Amz-Signature", b"AWSAccessKeyId"}:
            refuse = "a signature that is none"
        else:
            refuse_as_s3 = "an S3 request, unsigned"

    # the wire
    kinds.append(f"framing:{framing}")
    if framing.startswith("aws-chunked"):
        wire = aws_chunked(d.body, bad if framing == "aws-chunked-bad" else "", trailer)
        framing_headers, hangup = [(b"content-length", b"%d" % len(wire))], False
    else:
        framing_headers, wire, hangup = frame(framing, d.body, bad)
    version = draw(st.sampled_from([b"HTTP/1.1"] * 9 + [b"HTTP/1.0"]))
    needs_body = d.op in BODY_OPS and "mutation:method" not in kinds and not any(
        n == b"x-amz-copy-source" for n, _ in d.headers)
    lines = [d.method + b" " + d.path + (b"?" + query if query else b"") + b" " + version]
    if not any(n == b"host" for n, _ in d.headers) and draw(st.integers(0, 9)):
        lines.append(b"Host: x")
    lines += [n + b": " + v for n, v in d.headers + framing_headers]
    data = b"\r\n".join(lines) + b"\r\n\r\n" + wire
    return Hostile(target, d.method, data, hangup, hangup and needs_body, names, refuse,
                   refuse_as_s3, tuple(kinds))
