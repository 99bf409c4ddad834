"""Harness `s3xml`: the S3 XML request bodies mkv parses (`parse_complete`, `parse_delete`
with each Object's conditions, `parse_tagging` with `check_tags`) and the XML answers it
writes (`document`), read back.

The last byte picks a mode:
- a body: the input, as a CompleteMultipartUpload, a Delete (with a key limit) or a Tagging;
- round trips: parts, keys or tags whose text is the input's lines, written with `document`
  and parsed back.
A crash is an exception other than MalformedXML and S3Error, or a broken invariant: a
Complete names at least one part, each (int, str); a Delete 1 to `limit` keys, each with only
ETag/LastModifiedTime/Size conditions; tags are (str, str); and what `document` writes parses
back to the same text (for text XML 1.0 can hold: a C0 control other than TAB, CR and LF
cannot be written in XML at all, see fuzz/README.md).
"""

import atheris

from fuzz.common import check, run, tail

with atheris.instrument_imports(include=["mkv"]):
    from mkv.s3.deletes import _conditions_in_xml
    from mkv.s3.errors import S3Error
    from mkv.s3.metadata import check_tags
    from mkv.s3.xml import MalformedXML, document, parse_complete, parse_delete, parse_tagging

MAX_LEN = 8192
COMPLETE, DELETE, TAGGING, COMPLETE_BACK, DELETE_BACK, TAGGING_BACK = range(6)
LIMITS = (1, 2, 3, 1000)


def xml_text(data: bytes) -> str:
    """Text XML 1.0 can carry: the input as UTF-8, characters it cannot hold dropped."""
    return "".join(c for c in data.decode("utf-8", "replace")
                   if c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd"
                   or c >= "\U00010000")


def parse_body(mode: int, limit: int, body: bytes) -> None:
    try:
        if mode == COMPLETE:
            parts = parse_complete(body)
            check(len(parts) > 0 and all(isinstance(n, int) and isinstance(e, str)
                                         for n, e in parts), f"parts {parts!r}")
        elif mode == DELETE:
            quiet, objects = parse_delete(body, limit)
            check(isinstance(quiet, bool) and 1 <= len(objects) <= limit, f"{objects!r:.200}")
            for key, conditions in objects:
                check(isinstance(key, str) and set(conditions) <= {"ETag", "LastModifiedTime",
                                                                   "Size"}, f"{conditions!r}")
                _conditions_in_xml(conditions)
        else:
            tags = parse_tagging(body)
            check(all(isinstance(k, str) and isinstance(v, str) for k, v in tags),
                  f"tags {tags!r:.200}")
            check_tags(tags)
    except (MalformedXML, S3Error):
        pass


def round_trip(mode: int, lines: list[bytes]) -> None:
    texts = [xml_text(line) for line in lines]
    pairs = list(zip(texts[::2], texts[1::2], strict=False))
    if mode == COMPLETE_BACK:
        parts = [(i + 1, etag) for i, (_, etag) in enumerate(pairs)]
        body = document("CompleteMultipartUpload", [
            ("Part", [("PartNumber", str(n)), ("ETag", f'"{etag}"')]) for n, etag in parts])
        try:
            found = parse_complete(body)
        except MalformedXML as e:
            check(not parts, f"{body!r:.300} refused: {e}")
            return
        check(found == [(n, f'"{e}"'.strip().strip('"')) for n, e in parts],
              f"wrote {parts!r:.200}, read {found!r:.200}")
    elif mode == DELETE_BACK:
        objects = [(key, {"ETag": etag}) for key, etag in pairs]
        body = document("Delete", [("Quiet", "true")] + [
            ("Object", [("Key", key), ("ETag", c["ETag"])]) for key, c in objects])
        try:
            quiet, found = parse_delete(body)
        except MalformedXML as e:
            check(not objects, f"{body!r:.300} refused: {e}")
            return
        check(quiet and found == [(k, {"ETag": c["ETag"].strip()}) for k, c in objects],
              f"wrote {objects!r:.200}, read {found!r:.200}")
    else:
        body = document("Tagging", [("TagSet", [("Tag", [("Key", k), ("Value", v)])
                                                for k, v in pairs])])
        found = parse_tagging(body)
        check(found == pairs, f"wrote {pairs!r:.200}, read {found!r:.200}")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, TAGGING_BACK)
    limit = LIMITS[fdp.ConsumeIntInRange(0, len(LIMITS) - 1)]
    rest = fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode <= TAGGING:
        parse_body(mode, limit, rest)
    else:
        round_trip(mode, rest.split(b"\n"))


SEEDS = [
    b'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUpload xmlns="http://s3.amazon'
    b'aws.com/doc/2006-03-01/"><Part><PartNumber>1</PartNumber><ETag>"a54357aff0632cce46d942'
    b'af68356b38"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>0c78aef83f66abc1fa1e8477'
    b'f296d394</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part></CompleteMultipartUpload>'
    + tail(COMPLETE, 3),
    b"<CompleteMultipartUpload><Part><PartNumber>\xd9\xa3</PartNumber><ETag/></Part>"
    b"</CompleteMultipartUpload>" + tail(COMPLETE, 0),
    b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet><Object>'
    b"<Key>a/b.txt</Key><ETag>\"abc\"</ETag><LastModifiedTime>Wed, 21 Oct 2015 07:28:00 GMT"
    b"</LastModifiedTime><Size>12</Size></Object><Object><Key>c &amp; d</Key>"
    b"<LastModifiedTime>2015-10-21T07:28:00.000Z</LastModifiedTime></Object></Delete>"
    + tail(DELETE, 3),
    b"<Delete><Object><Key>k</Key><Size> 7 </Size></Object><Object><Key></Key></Object>"
    b"</Delete>" + tail(DELETE, 1),
    b"<Tagging><TagSet><Tag><Key>project</Key><Value>mkv</Value></Tag><Tag><Key>empty</Key>"
    b"</Tag></TagSet></Tagging>" + tail(TAGGING, 0),
    b'<!DOCTYPE x [<!ENTITY e "e">]><Tagging>&e;</Tagging>' + tail(TAGGING, 0),
    b"<a:Delete xmlns:a='urn:x'><a:Object><a:Key>\xe2\x82\xac</a:Key></a:Object></a:Delete>"
    + tail(DELETE, 2),
    b"part one\n\"etag\" \nkey two\n\t\r\nx" + tail(COMPLETE_BACK, 0),
    b"a/b\nW/\"tag\"\n<&>'\"\n]]>" + tail(DELETE_BACK, 0),
    b"k\nv\n\xc3\xa9\n\r\n\n\n" + tail(TAGGING_BACK, 0),
    # a crash found and fixed, kept: a Size of superscript two
    b"<Delete><Object><Key>k</Key><Size>\xc2\xb2</Size></Object></Delete>" + tail(DELETE, 3),
]

if __name__ == "__main__":
    run(TestOneInput, SEEDS, MAX_LEN)
