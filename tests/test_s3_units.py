"""The S3 face's pure parts, pinned to published vectors: SigV4 (AWS's documented examples),
aws-chunked with chunk and trailer signatures (the S3 streaming example, as aws-c-auth's tests
carry it), the checksums' catalogue check values, safe XML, and which requests count as S3;
and the inputs fuzz/ found crashing these parsers (each a 500 before its fix).
"""

import asyncio
import base64
import calendar
import hashlib
import json
import zlib

import pytest

from mkv.http.flow import EMPTY
from mkv.http.messages import Request
from mkv.s3.awschunked import MAX_LINE, AwsChunked, BadPayload
from mkv.s3.checksums import Checksum, algorithm_of
from mkv.s3.deletes import _conditions_in_xml, conditions_of
from mkv.s3.errors import S3Error
from mkv.s3.face import is_s3
from mkv.s3.forms import Form, check_policy, check_signature
from mkv.s3.request import parse_http_date, resolve_range, single_range
from mkv.s3.sigv4 import AuthError, is_v2, parse_amz_date, verify, verify_v2
from mkv.s3.xml import MalformedXML, parse_complete, parse_delete

EXAMPLE_SECRETS = {"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
MAY_24_2013 = calendar.timegm((2013, 5, 24, 0, 0, 0))
EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
TRAILER_SIGNATURE = "df5735bd9f3295cd9386572292562fefc93ba94e80a0a1ddcbd652c4e0a75e6c"


def example_auth(signed: str, signature: str) -> bytes:
    return (f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
            f"aws4_request, SignedHeaders={signed}, Signature={signature}").encode()


def test_sigv4_get_object_example():
    # "Example: GET Object" of AWS's Signature Version 4 documentation
    headers = {b"host": b"examplebucket.s3.amazonaws.com", b"range": b"bytes=0-9",
               b"x-amz-content-sha256": EMPTY_SHA.encode(), b"x-amz-date": b"20130524T000000Z",
               b"authorization": example_auth(
                   "host;range;x-amz-content-sha256;x-amz-date",
                   "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")}
    signed = verify(b"GET", b"/test.txt", b"", headers, EXAMPLE_SECRETS, now=MAY_24_2013)
    assert signed.access_key == "AKIAIOSFODNN7EXAMPLE"
    headers[b"range"] = b"bytes=0-10"
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/test.txt", b"", headers, EXAMPLE_SECRETS, now=MAY_24_2013)
    assert (e.value.code, e.value.status) == ("SignatureDoesNotMatch", 403)


def test_sigv4_list_objects_example_query_is_canonicalised():
    # "Example: GET Bucket (List Objects)": the query is sorted and encoded before signing
    headers = {b"host": b"examplebucket.s3.amazonaws.com",
               b"x-amz-content-sha256": EMPTY_SHA.encode(), b"x-amz-date": b"20130524T000000Z",
               b"authorization": example_auth(
                   "host;x-amz-content-sha256;x-amz-date",
                   "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")}
    verify(b"GET", b"/", b"max-keys=2&prefix=J", headers, EXAMPLE_SECRETS, now=MAY_24_2013)
    verify(b"GET", b"/", b"prefix=J&max-keys=2", headers, EXAMPLE_SECRETS, now=MAY_24_2013)


def test_sigv4_presigned_example_and_expiry():
    # "Example: Presigned URL" of AWS's query-string authentication documentation
    query = (b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524"
             b"%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400"
             b"&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330"
             b"da4c265957d157751f604d404")
    headers = {b"host": b"examplebucket.s3.amazonaws.com"}
    verify(b"GET", b"/test.txt", query, headers, EXAMPLE_SECRETS, now=MAY_24_2013 + 60)
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/test.txt", query, headers, EXAMPLE_SECRETS,
               now=MAY_24_2013 + 86401)
    assert e.value.code == "AccessDenied"
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/test.txt", query.replace(b"aeeed9", b"beeed9"), headers,
               EXAMPLE_SECRETS, now=MAY_24_2013)
    assert e.value.code == "SignatureDoesNotMatch"


def test_sigv4_refusals():
    headers = {b"host": b"h", b"x-amz-content-sha256": EMPTY_SHA.encode(),
               b"x-amz-date": b"20130524T000000Z",
               b"authorization": example_auth("host;x-amz-content-sha256;x-amz-date", "0" * 64)}
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/", b"", headers, EXAMPLE_SECRETS, now=MAY_24_2013 + 3600)
    assert e.value.code == "RequestTimeTooSkewed"
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/", b"", headers, {"someone-else": "x"}, now=MAY_24_2013)
    assert e.value.code == "InvalidAccessKeyId"
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/", b"", {**headers, b"authorization": b"AWS AKIA:c2ln"},
               EXAMPLE_SECRETS, now=MAY_24_2013)
    assert e.value.code == "AccessDenied"


def streaming_request(trailer: bool) -> dict[bytes, bytes]:
    """The headers of S3's streaming-upload example (its seed signature is SEED)."""
    return {b"host": b"s3.amazonaws.com", b"x-amz-date": b"20130524T000000Z",
            b"x-amz-storage-class": b"REDUCED_REDUNDANCY",
            b"x-amz-content-sha256": b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            b"content-encoding": b"aws-chunked", b"x-amz-decoded-content-length": b"66560",
            b"content-length": b"66824",
            b"authorization": example_auth(
                "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                "x-amz-decoded-content-length;x-amz-storage-class", SEED)}


def example_body(signatures: list[str], trailers: bytes = b"") -> bytes:
    return (b"10000;chunk-signature=%s\r\n%s\r\n" % (signatures[0].encode(), b"a" * 65536)
            + b"400;chunk-signature=%s\r\n%s\r\n" % (signatures[1].encode(), b"a" * 1024)
            + b"0;chunk-signature=%s\r\n" % signatures[2].encode() + trailers + b"\r\n")


async def pieces(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def decode(body: bytes, signed=None, expect_signatures=False, size=1000):
    async def run():
        decoder = AwsChunked(pieces(body, size), signed, expect_signatures)
        return b"".join([p async for p in decoder]), decoder.trailers
    return asyncio.run(run())


def test_aws_chunked_signed_example_decodes_and_checks_every_signature():
    signed = verify(b"PUT", b"/examplebucket/chunkObject.txt", b"", streaming_request(False),
                    EXAMPLE_SECRETS, now=MAY_24_2013)
    assert signed.signature == SEED
    body = example_body(CHUNK_SIGNATURES)
    assert len(body) == 66824  # the example's Content-Length
    for size in (1, 7, 1000, 70000):
        payload, trailers = decode(body, signed, size=size)
        assert (payload, trailers) == (b"a" * 66560, {})
    for i in range(3):
        wrong = list(CHUNK_SIGNATURES)
        wrong[i] = wrong[i][::-1]
        with pytest.raises(BadPayload) as e:
            decode(example_body(wrong), signed)
        assert (e.value.code, e.value.status) == ("SignatureDoesNotMatch", 403)
    tampered = body.replace(b"a" * 1024, b"a" * 1023 + b"b")
    with pytest.raises(BadPayload):
        decode(tampered, signed)
    # without keys (auth off) the signatures are read and ignored
    assert decode(example_body([s[::-1] for s in CHUNK_SIGNATURES]),
                  expect_signatures=True)[0] == b"a" * 66560


def test_aws_chunked_signed_trailer_example():
    signed = verify(b"PUT", b"/examplebucket/chunkObject.txt", b"", streaming_request(True),
                    EXAMPLE_SECRETS, now=MAY_24_2013)
    trailers = (b"first:1st\r\nsecond:2nd\r\nthird:3rd\r\nx-amz-trailer-signature:"
                + TRAILER_SIGNATURE.encode() + b"\r\n")
    payload, found = decode(example_body(CHUNK_SIGNATURES, trailers), signed)
    assert found == {"first": "1st", "second": "2nd", "third": "3rd"}
    with pytest.raises(BadPayload) as e:
        decode(example_body(CHUNK_SIGNATURES, trailers.replace(b"3rd", b"4th")), signed)
    assert e.value.code == "SignatureDoesNotMatch"


def test_aws_chunked_unsigned_trailer_as_boto3_writes_it():
    data = bytes(range(256)) * 100
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big"))
    body = (b"%x\r\n%s\r\n" % (len(data), data) + b"0\r\nx-amz-checksum-crc32:" + crc
            + b"\r\n\r\n")
    assert decode(body) == (data, {"x-amz-checksum-crc32": crc.decode()})


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",            # not hex
    b"5\r\nabc\r\n0\r\n\r\n",             # shorter than announced
    b"3\r\nabcdef\r\n0\r\n\r\n",          # longer than announced
    b"3\r\nabc\r\n",                      # no last chunk
    b"3\r\nabc\r\n0\r\n\r\ngarbage",      # data after the end
    b"-3\r\nabc\r\n0\r\n\r\n",            # negative
    b"3;chunk-signature=\r\nabc\r\n0\r\n\r\n" + b"x" * 5000,
])
def test_aws_chunked_malformed_bodies_are_refused(body):
    with pytest.raises(BadPayload):
        decode(body)


def test_aws_chunked_signed_chunks_need_a_signature():
    with pytest.raises(BadPayload):
        decode(b"3\r\nabc\r\n0\r\n\r\n", expect_signatures=True)


@pytest.mark.parametrize("algorithm, check", [
    ("crc32", "cbf43926"), ("crc32c", "e3069283"), ("crc64nvme", "ae8b14860a799888"),
    ("sha1", hashlib.sha1(b"123456789").hexdigest()),
    ("sha256", hashlib.sha256(b"123456789").hexdigest()),
])
def test_checksums_match_catalogue_check_values(algorithm, check):
    # the CRC catalogue's check value is the CRC of "123456789"; fed in two pieces
    checksum = Checksum(algorithm)
    checksum.update(b"1234")
    checksum.update(b"56789")
    assert base64.b64decode(checksum.b64digest()).hex() == check
    assert algorithm_of(f"X-Amz-Checksum-{algorithm.upper()}") == algorithm


def test_xml_parsing_is_safe_and_strict():
    complete = (b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b'<Part><PartNumber>1</PartNumber><ETag>"abc"</ETag></Part>'
                b"<Part><PartNumber>2</PartNumber><ETag>def</ETag></Part>"
                b"</CompleteMultipartUpload>")
    assert parse_complete(complete) == [(1, "abc"), (2, "def")]
    assert parse_delete(b"<Delete><Quiet>true</Quiet><Object><Key>a b</Key></Object>"
                        b"<Object><Key>c</Key><ETag>\"e\"</ETag><Size> 3 </Size></Object>"
                        b"</Delete>") == (True, [("a b", {}), ("c", {"ETag": '"e"',
                                                                      "Size": "3"})])
    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
              b"<Delete><Object><Key>&lol2;</Key></Object></Delete>")
    external = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b"<Delete><Object><Key>&x;</Key></Object></Delete>")
    for bad in (laughs, external, b"<Delete><Object>", b"", b"not xml",
                b"<Other/>", b"<Delete/>", b"<Delete><Object><Key>k</Key></Object>"
                + b"<Object><Key>k</Key></Object>" * 1000 + b"</Delete>",
                b"<Delete>" + b" " * (3 << 20) + b"</Delete>"):
        with pytest.raises(MalformedXML):
            parse_delete(bad)
    with pytest.raises(MalformedXML):
        parse_complete(b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber>"
                       b"<ETag>e</ETag></Part></CompleteMultipartUpload>")


def request(method: bytes, path: bytes, query: bytes = b"",
            headers: dict[bytes, bytes] | None = None) -> Request:
    return Request(method, path, query, headers or {b"host": b"h"}, EMPTY)


def test_is_s3_recognises_s3_and_leaves_native_requests_alone():
    assert not is_s3(request(b"GET", b"/key"))
    assert not is_s3(request(b"PUT", b"/key", headers={b"content-length": b"3"}))
    assert not is_s3(request(b"GET", b"/pre", b"list&limit=10"))
    assert not is_s3(request(b"GET", b"/key", b"foo=bar"))
    assert not is_s3(request(b"GET", b"/key", headers={b"authorization": b"Basic dXNlcg=="}))
    assert is_s3(request(b"GET", b"/b/k", headers={b"authorization": b"AWS4-HMAC-SHA256 x"}))
    for query in (b"list-type=2", b"uploads", b"uploadId=1&partNumber=2", b"delete",
                  b"x-id=GetObject", b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab"):
        assert is_s3(request(b"GET", b"/b", query)), query
    assert is_s3(request(b"PUT", b"/b/k", headers={b"x-amz-copy-source": b"/b/j"}))
    assert is_s3(request(b"POST", b"/b", b"delete"))


def test_sigv2_examples():
    # AWS's Signature Version 2 documentation: "Object GET", and its query-string example
    headers = {b"host": b"johnsmith.s3.amazonaws.com",
               b"date": b"Tue, 27 Mar 2007 19:36:42 +0000",
               b"authorization": b"AWS AKIAIOSFODNN7EXAMPLE:bWq2s1WEIj+Ydj0vQ697zp+IXMU="}
    march_27 = calendar.timegm((2007, 3, 27, 19, 36, 42))
    assert verify_v2(b"GET", b"/johnsmith/photos/puppy.jpg", b"", headers, EXAMPLE_SECRETS,
                     now=march_27) == "AKIAIOSFODNN7EXAMPLE"
    with pytest.raises(AuthError):
        verify_v2(b"GET", b"/johnsmith/photos/kitten.jpg", b"", headers, EXAMPLE_SECRETS,
                  now=march_27)
    query = (b"AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1175139620&"
             b"Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D")
    assert verify_v2(b"GET", b"/johnsmith/photos/puppy.jpg", query, {}, EXAMPLE_SECRETS,
                     now=1175139000) == "AKIAIOSFODNN7EXAMPLE"
    with pytest.raises(AuthError) as e:
        verify_v2(b"GET", b"/johnsmith/photos/puppy.jpg", query, {}, EXAMPLE_SECRETS,
                  now=1175139621)
    assert e.value.code == "AccessDenied"


# --- inputs fuzz/ (atheris) found crashing the parsers: each was a 500 before its fix ---
def test_v2_seen_in_a_parameter_value_is_refused():
    # is_v2 sees "AWSAccessKeyId=" in ?prefix=…; there is no key parameter, no AWS header
    query, headers = b"prefix=AWSAccessKeyId=x", {b"host": b"h"}
    assert is_v2(query, headers)
    with pytest.raises(AuthError) as e:
        verify_v2(b"GET", b"/b", query, headers, EXAMPLE_SECRETS, now=MAY_24_2013)
    assert e.value.code == "AccessDenied"


@pytest.mark.parametrize("date", ["20231314T221320Z", "20230230T000000Z", "00000101T000000Z",
                                  "20230101T250000Z"])
def test_an_amz_date_that_is_no_date_is_refused(date):
    with pytest.raises(AuthError) as e:
        parse_amz_date(date)
    assert e.value.code == "AccessDenied"
    query = (b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F"
             + date[:8].encode() + b"%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date="
             + date.encode() + b"&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
             b"&X-Amz-Signature=" + b"0" * 64)
    with pytest.raises(AuthError):
        verify(b"GET", b"/b/k", query, {b"host": b"h"}, EXAMPLE_SECRETS, now=MAY_24_2013)


def test_signatures_that_are_not_ascii_do_not_match():
    headers = {b"host": b"h", b"x-amz-content-sha256": EMPTY_SHA.encode(),
               b"x-amz-date": b"20130524T000000Z",
               b"authorization": example_auth("host;x-amz-content-sha256;x-amz-date",
                                              "\xe9" * 64).replace(b"\xc3\xa9", b"\xe9")}
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/", b"", headers, EXAMPLE_SECRETS, now=MAY_24_2013)
    assert e.value.code == "SignatureDoesNotMatch"
    query = (b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F"
             b"20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
             b"&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=%E2%82%AC")
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/b/k", query, {b"host": b"h"}, EXAMPLE_SECRETS, now=MAY_24_2013)
    assert e.value.code == "SignatureDoesNotMatch"
    v2 = {b"date": b"Tue, 27 Mar 2007 19:36:42 +0000",
          b"authorization": b"AWS AKIAIOSFODNN7EXAMPLE:G\x00\xe2\xe2\xe2"}
    with pytest.raises(AuthError) as e:
        verify_v2(b"GET", b"/b/k", b"", v2, EXAMPLE_SECRETS,
                  now=calendar.timegm((2007, 3, 27, 19, 36, 42)))
    assert e.value.code == "SignatureDoesNotMatch"
    query = b"AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1175139620&Signature=%E2%82%AC"
    with pytest.raises(AuthError) as e:
        verify_v2(b"GET", b"/b/k", query, {}, EXAMPLE_SECRETS, now=1175139000)
    assert e.value.code == "SignatureDoesNotMatch"


def test_a_v2_date_past_any_clock_is_refused():
    headers = {b"date": b"Tue, 14 Nov 2023 2255555555555555555555:13:20 GMT",
               b"authorization": b"AWS AKIAIOSFODNN7EXAMPLE:c2lnbmF0dXJl"}
    with pytest.raises(AuthError) as e:
        verify_v2(b"GET", b"/b/k", b"", headers, EXAMPLE_SECRETS)
    assert e.value.code == "AccessDenied"


def test_a_presigned_signed_header_name_may_be_any_text():
    query = (b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F"
             b"20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
             b"&X-Amz-Expires=86400&X-Amz-SignedHeaders=host%3Bx%FF%E2%82%AC"
             b"&X-Amz-Signature=" + b"0" * 64)
    with pytest.raises(AuthError) as e:
        verify(b"GET", b"/b/k", query, {b"host": b"h"}, EXAMPLE_SECRETS, now=MAY_24_2013)
    assert e.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("value", [
    b"Thu, 01 Jan 1970 00:00:00 +2352222222222222222222222222222222222222222",
    b"Tue, 14 Nov 2023 99999999999999999999:13:20 GMT",
    b"Tue, 14 Nov 99999999999999999999 22:13:20 GMT",
])
def test_http_dates_past_any_clock_are_no_dates(value):
    assert parse_http_date(value) is None
    assert parse_http_date(value.decode()) is None


@pytest.mark.parametrize("header, size, span", [
    (b"bytes=" + b"1" * 5000 + b"-", 10, None),  # int() refuses over 4,300 digits
    (b"bytes=0-" + b"9" * 5000, 10, (0, 9)),
    (b"bytes=-" + b"9" * 5000, 10, (0, 9)),
    (b"bytes=" + b"0" * 5000 + b"5-" + b"0" * 5000 + b"7", 10, (5, 7)),
    (b"bytes=" + b"9" * 19 + b"-", 10, None),
    (b"bytes=3-" + b"0" * 30, 10, None),
])
def test_ranges_of_any_length_resolve(header, size, span):
    assert resolve_range(single_range(header), size) == span


@pytest.mark.parametrize("size", [1, 7, 1000, 70000])
def test_aws_chunked_line_limit_holds_however_the_body_is_cut(size):
    # a chunk header past MAX_LINE was taken when it came in one read, refused in pieces
    with pytest.raises(BadPayload):
        decode(b"5;" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n", size=size)
    line = b"5;" + b"x" * (MAX_LINE - 2)  # at the limit: taken, its CR and LF split or not
    assert decode(line + b"\r\nhello\r\n0\r\n\r\n", size=size) == (b"hello", {})


def test_a_form_boundary_over_256_bytes_is_malformed():
    with pytest.raises(S3Error) as e:
        Form(pieces(b"", 1), b"multipart/form-data; boundary=" + b"b" * 300)
    assert (e.value.status, e.value.code) == (400, "MalformedPOSTRequest")


@pytest.mark.parametrize("fields", [
    {"x-amz-signature": "\xe9", "x-amz-algorithm": "AWS4-HMAC-SHA256", "policy": "e30=",
     "x-amz-credential": "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"},
    {"signature": "\u20ac", "awsaccesskeyid": "AKIAIOSFODNN7EXAMPLE", "policy": "e30="},
])
def test_a_form_signature_that_is_not_ascii_does_not_match(fields):
    with pytest.raises(S3Error) as e:
        check_signature(fields, EXAMPLE_SECRETS)
    assert (e.value.status, e.value.code) == (403, "SignatureDoesNotMatch")


@pytest.mark.parametrize("conditions", [
    b'[["content-length-range", 1, 1e999]]',  # 1e999 is inf: int() overflows
    b'[["content-length-range", -Infinity, 1]]',
    b"[" * 5000 + b"]" * 5000,  # json recurses a frame a level
])
def test_a_policy_json_cannot_take_apart_is_invalid(conditions):
    document = b'{"expiration": "2030-01-01T00:00:00Z", "conditions": ' + conditions + b"}"
    with pytest.raises(S3Error) as e:
        check_policy(base64.b64encode(document).decode(), {}, "bucket", MAY_24_2013)
    assert (e.value.status, e.value.code) == (400, "InvalidPolicyDocument")


@pytest.mark.parametrize("expiration, valid", [
    ("2030-01-01T00:00:00Z", True), ("2030-01-01T00:00:00.000Z", True),  # boto3's, JS's
    ("2030-01-01 00:00:00.123456+00:00", False),  # str(datetime): s3-tests' bad date format
    ("2030-01-01T00:00:00", False), ("2030-01-01T00:00:00+02:00", False), ("2030-01-01", False),
    ("\u0662030-01-01T00:00:00Z", False), (20300101, False), (None, False),
])
def test_a_policy_expiration_is_iso8601_utc(expiration, valid):
    document = json.dumps({"expiration": expiration, "conditions": []}).encode()
    if valid:
        assert check_policy(base64.b64encode(document).decode(), {}, "b", MAY_24_2013) == \
            (0, None)
        return
    with pytest.raises(S3Error) as e:
        check_policy(base64.b64encode(document).decode(), {}, "b", MAY_24_2013)
    assert (e.value.status, e.value.code) == (400, "InvalidPolicyDocument")


@pytest.mark.parametrize("size", ["\xb311", "\xb2", "\u0663", "1" * 5000, "0" * 30 + "1" * 20])
def test_a_size_condition_of_other_digits_is_refused(size):
    # isdigit takes superscripts, which int() refuses; S3 takes ASCII digits only
    headers = {b"x-amz-if-match-size": size.encode("utf-8")}
    if size[0] == "\xb3":
        headers[b"x-amz-if-match-size"] = size.encode("latin-1")  # as a client's byte 0xB3
    with pytest.raises(S3Error) as e:
        conditions_of(request(b"DELETE", b"/b/k", headers=headers))
    assert (e.value.status, e.value.code) == (400, "InvalidArgument")
    with pytest.raises(MalformedXML):
        _conditions_in_xml({"Size": size})
    assert conditions_of(request(b"DELETE", b"/b/k", headers={
        b"x-amz-if-match-size": b" 0007 "})).size == 7
