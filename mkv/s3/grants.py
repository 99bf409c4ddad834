"""S3 access control lists, as pure functions: canned ACLs, `x-amz-grant-*` headers and
AccessControlPolicy XML read into grants, grants written back as S3 answers them, and whether
a caller holds a permission.

A caller is an access key of `-s3_keys`, or None (anonymous). A grant is `[grantee,
permission]`, the grantee `id:<access key>`, `group:AllUsers`, `group:AuthenticatedUsers` or
`owner`: the resource's owner, whoever that is (an object's ACL is asked for before its
bucket's owner is looked up). As on S3, the owner's own grant is a grant like the others: a
`private` ACL is the owner's FULL_CONTROL, and an owner may revoke its own (mkv lets an owner
do anything whatever its ACL says, as S3 always lets it read and write the ACL). Grants are
kept in the order S3 answers them: the others' first, the owner's last. An access key's
canonical ID (what Owner and a CanonicalUser grantee name) is the access key itself.
"""

import re
from xml.etree.ElementTree import Element

from mkv.s3 import xml as s3xml
from mkv.s3.errors import S3Error
from mkv.s3.xml import MalformedXML, Node

Grant = list[str]  # [grantee, permission]
READ, WRITE, READ_ACP, WRITE_ACP, FULL_CONTROL = (
    "READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL")
PERMISSIONS = (READ, WRITE, READ_ACP, WRITE_ACP, FULL_CONTROL)
ALL_USERS, AUTHENTICATED, OWNER = "group:AllUsers", "group:AuthenticatedUsers", "owner"
_GROUP_URI = "http://acs.amazonaws.com/groups/global/"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
ANONYMOUS_OWNER = "mkv"  # the owner shown when no S3 keys are set

CANNED: dict[str, list[Grant]] = {
    "private": [[OWNER, FULL_CONTROL]],
    "public-read": [[ALL_USERS, READ], [OWNER, FULL_CONTROL]],
    "public-read-write": [[ALL_USERS, READ], [ALL_USERS, WRITE], [OWNER, FULL_CONTROL]],
    "authenticated-read": [[AUTHENTICATED, READ], [OWNER, FULL_CONTROL]],
    # objects: the bucket's owner owns every object in it (mkv/s3/access.py), so these are
    # private too
    "bucket-owner-read": [[OWNER, FULL_CONTROL]],
    "bucket-owner-full-control": [[OWNER, FULL_CONTROL]],
}
_GRANT_HEADERS = {f"x-amz-grant-{p.lower().replace('_', '-')}".encode(): p for p in PERMISSIONS}
_GRANTEE = re.compile(r'\s*(id|uri|emailAddress)\s*=\s*"?([^",]*)"?\s*(?:,|$)', re.IGNORECASE)


def _invalid(message: str) -> S3Error:
    return S3Error(400, "InvalidArgument", message)


def _grantee_of_uri(uri: str) -> str:
    if uri in (_GROUP_URI + "AllUsers", _GROUP_URI + "AuthenticatedUsers"):
        return "group:" + uri.rpartition("/")[2]
    raise _invalid(f"Invalid group uri {uri!r}: mkv knows AllUsers and AuthenticatedUsers")


def _user(user_id: str, known: set[str] | None) -> str:
    if known is not None and user_id not in known:
        raise _invalid(f"Invalid id {user_id!r}: no such access key")
    return "id:" + user_id


def _header_grants(value: str, permission: str, known: set[str] | None) -> list[Grant]:
    grants, pos = [], 0
    while pos < len(value):
        m = _GRANTEE.match(value, pos)
        if not m or m.end() == pos:
            raise _invalid(f"Invalid grant header value {value!r}")
        kind, text = m.group(1).lower(), m.group(2).strip()
        if kind == "emailaddress":
            raise S3Error(400, "UnresolvableGrantByEmailAddress", "The email address you "
                          "provided does not match any account on record.")
        grants.append([_grantee_of_uri(text) if kind == "uri" else _user(text, known),
                       permission])
        pos = m.end()
    return grants


def acl_of_headers(headers: dict[bytes, bytes], known: set[str] | None) -> list[Grant] | None:
    """The ACL a request's `x-amz-acl` or `x-amz-grant-*` headers ask for; None if neither.
    `known`: the access keys a grant may name (None: any)."""
    canned = headers.get(b"x-amz-acl")
    granted = [(name, value) for name, value in headers.items() if name in _GRANT_HEADERS]
    if canned is not None and granted:
        raise S3Error(400, "InvalidRequest", "Specifying both Canned ACLs and Header Grants "
                      "is not allowed")
    if canned is not None:
        return canned_acl(canned.decode("latin-1").strip())
    if not granted:
        return None
    grants: list[Grant] = []
    for name, value in granted:
        grants += _header_grants(value.decode("latin-1"), _GRANT_HEADERS[name], known)
    return in_order(grants)


def private() -> list[Grant]:
    """The ACL of a resource that asked for none."""
    return canned_acl("private")


def canned_acl(name: str) -> list[Grant]:
    if name not in CANNED:
        raise _invalid(f"Unknown canned ACL {name!r}")
    return [list(grant) for grant in CANNED[name]]


def parse_policy(body: bytes, owner: str, known: set[str] | None) -> list[Grant]:
    """PutBucketAcl's or PutObjectAcl's AccessControlPolicy: its grants, the owner's as
    `owner`. The Owner it names must be the owner."""
    root = s3xml.parse(body, "AccessControlPolicy")
    owner_element = s3xml.children(root, "Owner")
    if owner_element:
        named = (s3xml.text_of(owner_element[0], "ID") or "").strip()
        if named and named != owner:
            raise S3Error(403, "AccessDenied", "The Owner of an AccessControlPolicy must be "
                          "the resource's owner")
    grants: list[Grant] = []
    for acl in s3xml.children(root, "AccessControlList"):
        for element in s3xml.children(acl, "Grant"):
            grants.append(_xml_grant(element, owner, known))
    return in_order(grants)


def in_order(grants: list[Grant]) -> list[Grant]:
    """Groups' grants before users', as S3 and RGW answer them (clients compare the lists in
    order), each kind in the order given."""
    return sorted(grants, key=lambda grant: not grant[0].startswith("group:"))


def _xml_grant(element: Element, owner: str, known: set[str] | None) -> Grant:
    grantee = s3xml.children(element, "Grantee")
    permission = (s3xml.text_of(element, "Permission") or "").strip()
    if not grantee or permission not in PERMISSIONS:
        raise MalformedXML("each Grant needs a Grantee and a Permission")
    kind = next((v for k, v in grantee[0].attrib.items() if k.endswith("type")), "")
    user_id, uri = s3xml.text_of(grantee[0], "ID"), s3xml.text_of(grantee[0], "URI")
    if kind == "AmazonCustomerByEmail" or s3xml.text_of(grantee[0], "EmailAddress"):
        raise S3Error(400, "UnresolvableGrantByEmailAddress", "The email address you "
                      "provided does not match any account on record.")
    if uri is not None:
        return [_grantee_of_uri(uri.strip()), permission]
    if user_id is not None:  # the owner (also one that is no key: mkv's own) is `owner`
        return [OWNER if user_id.strip() == owner else _user(user_id.strip(), known),
                permission]
    raise MalformedXML("a Grantee names an ID or a URI")


def _grantee_nodes(grantee: str) -> tuple[str, list[Node]]:
    kind, _, name = grantee.partition(":")
    if kind == "group":
        return "Group", [("URI", _GROUP_URI + name)]
    return "CanonicalUser", [("ID", name), ("DisplayName", name)]


def policy_document(owner: str, grants: list[Grant]) -> bytes:
    """GetBucketAcl's or GetObjectAcl's answer: the grants, `owner` named."""
    nodes: list[Node] = []
    for grantee, permission in grants:
        grantee = "id:" + owner if grantee == OWNER else grantee
        kind, children = _grantee_nodes(grantee)
        nodes.append(("Grant", [
            (f'Grantee xmlns:xsi="{_XSI}" xsi:type="{kind}"', children),
            ("Permission", permission)]))
    return s3xml.document("AccessControlPolicy", [
        ("Owner", [("ID", owner), ("DisplayName", owner)]),
        ("AccessControlList", nodes)])


def allows(grants: list[Grant], caller: str | None, permission: str) -> bool:
    """Whether `grants` give `caller` (None: anonymous) `permission` (FULL_CONTROL gives
    every one)."""
    who = {ALL_USERS} if caller is None else {ALL_USERS, AUTHENTICATED, "id:" + caller}
    return any(grantee in who and granted in (permission, FULL_CONTROL)
               for grantee, granted in grants)
