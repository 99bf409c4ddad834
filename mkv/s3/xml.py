"""S3's XML: answers built as text, request bodies parsed with defusedxml under a size limit.

An answer is a tree of `(name, content)` pairs: content is a string (escaped text), a list of
pairs (child elements), or None (the element is left out). Request bodies (Complete, Delete)
are parsed by defusedxml, which refuses entity declarations and external references; any
problem is `MalformedXML`.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XML = ("Content-Type", "application/xml")  # the header of every XML answer
MAX_XML_BODY = 2 * 1024 * 1024  # 10,000 parts or 1,000 keys of 1 KiB fit
_HEADER = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"})

Node = tuple[str, "str | list[Node] | None"]


class MalformedXML(Exception):
    pass


def _render(node: Node, out: list[str]) -> None:
    name, content = node  # a name may carry attributes: `Grantee xsi:type="Group"`
    if content is None:
        return
    end = name.partition(" ")[0]
    if isinstance(content, str):
        out.append(f"<{name}>{content.translate(_ESCAPES)}</{end}>")
        return
    out.append(f"<{name}>")
    for child in content:
        _render(child, out)
    out.append(f"</{end}>")


def document(name: str, children: list[Node], namespaced: bool = True) -> bytes:
    """An S3 answer: the root element in S3's namespace (or none, as POST Object's answer
    has it), then `children`."""
    out = [f'<{name} xmlns="{NAMESPACE}">' if namespaced else f"<{name}>"]
    for child in children:
        _render(child, out)
    out.append(f"</{name}>")
    return _HEADER + "".join(out).encode()


def error_document(code: str, message: str, extra: Iterable[Node] = ()) -> bytes:
    out: list[str] = ["<Error>"]
    for child in (("Code", code), ("Message", message), *extra):
        _render(child, out)
    out.append("</Error>")
    return _HEADER + "".join(out).encode()


def timestamp(seconds: float) -> str:
    """ISO 8601 with milliseconds, as S3 lists times: 2009-10-12T17:50:30.000Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(seconds * 1000) % 1000:03d}Z"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse(body: bytes, root: str) -> Element:
    """The root element of a request body, checked to be `root` (any namespace)."""
    if len(body) > MAX_XML_BODY:
        raise MalformedXML("the XML body is too large")
    try:
        element = fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as e:
        raise MalformedXML(f"the XML is not well-formed: {e}") from None
    if _local(element.tag) != root:
        raise MalformedXML(f"expected <{root}>, got <{_local(element.tag)}>")
    return element


def children(element: Element, name: str) -> list[Element]:
    return [c for c in element if _local(c.tag) == name]


def text_of(element: Element, name: str) -> str | None:
    found = children(element, name)
    return (found[0].text or "") if found else None


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """CompleteMultipartUpload: (part number, ETag without quotes), in the order given."""
    root = parse(body, "CompleteMultipartUpload")
    parts = []
    for part in children(root, "Part"):
        number, etag = text_of(part, "PartNumber"), text_of(part, "ETag")
        if number is None or etag is None:
            raise MalformedXML("each Part needs a PartNumber and an ETag")
        try:
            parts.append((int(number), etag.strip().strip('"')))
        except ValueError:
            raise MalformedXML(f"bad PartNumber {number!r}") from None
    if not parts:
        raise MalformedXML("CompleteMultipartUpload names no part")
    return parts


def parse_delete(body: bytes, limit: int = 1000
                 ) -> tuple[bool, list[tuple[str, dict[str, str]]]]:
    """Delete (multi-object): whether Quiet, and the keys in the order given, each with the
    conditions its Object names (ETag, LastModifiedTime, Size: their text)."""
    root = parse(body, "Delete")
    quiet = (text_of(root, "Quiet") or "").strip().lower() == "true"
    objects = []
    for obj in children(root, "Object"):
        key = text_of(obj, "Key")
        if key is None:
            raise MalformedXML("each Object needs a Key")
        conditions = {name: text.strip() for name in ("ETag", "LastModifiedTime", "Size")
                      if (text := text_of(obj, name)) is not None}
        objects.append((key, conditions))
    if not objects or len(objects) > limit:
        raise MalformedXML(f"Delete names {len(objects)} keys: between 1 and {limit} are "
                           "allowed")
    return quiet, objects


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """PutObjectTagging: the (key, value) pairs of its TagSet, in the order given."""
    root = parse(body, "Tagging")
    tags = []
    for tag_set in children(root, "TagSet"):
        for tag in children(tag_set, "Tag"):
            key, value = text_of(tag, "Key"), text_of(tag, "Value")
            if key is None:
                raise MalformedXML("each Tag needs a Key")
            tags.append((key, value or ""))
    return tags


def now_timestamp() -> str:
    return timestamp(datetime.now(UTC).timestamp())
